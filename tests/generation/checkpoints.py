"""Checkpoints generate reads besides the language models (the ``gpt``, ``bert`` and ``lstm`` fixtures of
tests/conftest.py): classifier and SFT checkpoints written directly, as finetuning writes them."""

from pathlib import Path

import torch

from lmkit import artifacts
from lmkit.checkpoint import TrainerState, read_checkpoint
from lmkit.data.instructions import DEFAULT_TEMPLATE
from lmkit.models.classifier import SequenceClassifier
from lmkit.training.checkpoint import write_checkpoint

LABELS = ["module", "class", "function"]


def write_model(out: Path, model: torch.nn.Module, model_config, objective: str, tokenizer_dir: Path,
                extra: dict | None = None) -> Path:
    """Commit ``model`` as a checkpoint artifact at ``out`` (no optimizer state)."""
    tokenizer = artifacts.load(tokenizer_dir, kind="tokenizer")
    recipe = artifacts.make_recipe("checkpoint", {"test": str(out), "objective": objective}, [], [])
    with artifacts.ArtifactWriter(out, "checkpoint", recipe, force=True) as writer:
        write_checkpoint(writer.tmp, model, model_config, objective, ({}, {"optimizers": [], "keys": "index"}),
                         TrainerState(), tokenizer, extra)
        writer.commit({}, {"artifacts": [{"role": "tokenizer", "path": "tokenizer", "id": tokenizer.id}],
                           "files": []}, {})
    return out


def classifier(base: Path, out: Path, pooling: str | None = None) -> Path:
    """A 3-label classifier on ``base``'s body, its head at random (what finetuning starts from)."""
    checkpoint = read_checkpoint(base)
    config = checkpoint.model_config
    pooling = pooling or ("cls" if config.arch == "bert" else "last")
    torch.manual_seed(0)
    model = SequenceClassifier(config, len(LABELS), pooling)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)  # far from uniform, so the predicted label depends on the text
    return write_model(out, model, config, "classify", base / "tokenizer",
                       {"head": {"labels": LABELS, "pooling": pooling}})


def sft(base: Path, out: Path, template: str = DEFAULT_TEMPLATE) -> Path:
    checkpoint = read_checkpoint(base)
    return write_model(out, checkpoint.build_model(), checkpoint.model_config, "sft", base / "tokenizer",
                       {"template": template})
