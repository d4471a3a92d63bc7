"""Saving checkpoints and resuming training from them: weights, model config, tokenizer and the complete
trainer state (optimizer moments, every RNG). The format and reading it are ``lmkit.checkpoint``'s.

Nothing is pickled: the trainer state is JSON and safetensors.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model
from torch import nn

from lmkit import artifacts
from lmkit.checkpoint import (
    MODEL_CONFIG_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    Checkpoint,
    TrainerState,
    checkpoint_format,
    not_safetensors,
)
from lmkit.models.config import ModelConfig


def step_tag(step: int) -> str:
    """Name of the checkpoint saved after optimizer step ``step`` in a run directory."""
    return f"step-{step:08d}"


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {"python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]]}


def _cuda_rng_state() -> dict[str, torch.Tensor]:
    """The CUDA generator of the device this process trains on (setup made it current), as ``rng.cuda.0``: every
    rank's is the same (one seed, the same random ops), and rank 0 saves it. Older checkpoints hold every visible
    device's generator, ``rng.cuda.N``, of which rank 0's own (cuda:0) is the one that had advanced."""
    if not torch.cuda.is_available():
        return {}
    return {"rng.cuda.0": torch.cuda.get_rng_state(torch.cuda.current_device())}


def _restore_cuda_rng(tensors: dict[str, torch.Tensor]) -> None:
    """Set this process's training device's CUDA generator from ``rng.cuda.0``, and drop every ``rng.cuda.N``
    from ``tensors``. Each rank sets its own device, on any number of devices (restoring every saved device's
    state set rank r's cuda:r to rank 0's unused copy, and failed where fewer devices than saved were visible)."""
    saved = {key: tensors.pop(key) for key in [key for key in tensors if key.startswith("rng.cuda.")]}
    if "rng.cuda.0" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["rng.cuda.0"], torch.cuda.current_device())


def _restore_rng(saved: dict[str, Any], torch_state: torch.Tensor) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, *rest = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch_state)


def write_checkpoint(directory: Path, model: nn.Module, model_config: ModelConfig, objective: str,
                     optimizer_state: tuple[dict[str, torch.Tensor], dict[str, Any]], state: TrainerState,
                     tokenizer: artifacts.Artifact, extra: dict[str, Any] | None = None) -> int | None:
    """Write a checkpoint's files into ``directory`` (an ArtifactWriter's temporary directory). Returns the
    format version these files need, for the writer's commit (None: the kind's default; a chat checkpoint's
    model.json needs a later one).

    ``model`` is an unsharded module; ``optimizer_state`` is ``Optimizers.state_tensors(...)``;
    ``extra`` adds keys to model.json ("head", "template", "lora", "chat").
    """
    save_model(model, str(directory / MODEL_FILE))
    described = {"model": model_config.to_dict(), "objective": objective, **(extra or {})}
    (directory / MODEL_CONFIG_FILE).write_text(json.dumps(described, indent=2) + "\n")
    tokenizer_dir = directory / "tokenizer"
    tokenizer_dir.mkdir()
    for name in [artifacts.MANIFEST, *tokenizer.manifest["files"]]:
        shutil.copy2(tokenizer.path / name, tokenizer_dir / name)
    (directory / "trainer").mkdir()
    tensors, optimizer_meta = optimizer_state
    tensors = {**tensors, "rng.torch": torch.get_rng_state(), **_cuda_rng_state()}
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    payload = {"state": asdict(state), "rng": _rng_state(), "optimizer": optimizer_meta}
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=1) + "\n")
    return checkpoint_format(extra)



def restore_training(checkpoint: Checkpoint, optimizers, model: nn.Module, sharded: bool = False) -> TrainerState:
    """Load optimizer moments and every RNG state; returns the trainer state to continue from.

    A run trained with --shard saved its optimizer state gathered and keyed by parameter name, an unsharded
    run by parameter index; either resumes into either (elastic resume): the state is full in both.
    """
    payload = json.loads(checkpoint.artifact.file(STATE_FILE).read_text())
    try:
        tensors = load_file(str(checkpoint.artifact.file(OPTIMIZER_FILE)))
    except SafetensorError as exc:
        raise not_safetensors(checkpoint.artifact.file(OPTIMIZER_FILE), exc) from None
    torch_rng = tensors.pop("rng.torch")
    _restore_cuda_rng(tensors)
    by_name = payload["optimizer"].get("keys") == "name"
    if by_name or sharded:
        from lmkit.training.distributed import load_full_optimizer_states

        states = optimizers.saved_states(tensors, payload["optimizer"])
        if not by_name:  # an unsharded run's, into a sharded model
            states = optimizers.keyed_by_name(states, model)
        load_full_optimizer_states(model, optimizers, states)
    else:
        optimizers.load_state_tensors(tensors, payload["optimizer"])
    _restore_rng(payload["rng"], torch_rng)
    return TrainerState(**payload["state"])

