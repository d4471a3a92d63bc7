"""The training loop on a synthetic stream: a golden loss curve guards against silent changes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit.data.packing import TokenStream
from lmkit.models import build_model
from lmkit.models.presets import model_config
from lmkit.training.checkpoint import TrainerState
from lmkit.training.distributed import Distributed
from lmkit.training.loop import LoopSettings, fit
from lmkit.training.objectives import BatchLayout, CausalLM
from lmkit.training.optim import build_optimizer

GOLDEN = Path(__file__).parent / "golden" / "gpt_tiny_clm_loss.json"


def run_tiny(tmp_path: Path, steps: int = 12) -> list[float]:
    rng = np.random.default_rng(0)
    # A learnable stream: a repeated random "sentence" with noise.
    sentence = rng.integers(7, 64, size=50)
    tokens = np.concatenate([np.where(rng.random(50) < 0.1, rng.integers(7, 64, size=50), sentence)
                             for _ in range(60)]).astype(np.int32)
    stream = TokenStream(tokens, 60, len(tokens) * 4)
    layout = BatchLayout(micro_batch=4, accumulation=2, world_size=1)
    objective = CausalLM(stream, None, 16, layout, seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(model_config("gpt-tiny", 64))
    optimizers = build_optimizer(model, "adamw", 1e-2, 0.1, (0.9, 0.95))
    settings = LoopSettings(lr=1e-2, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1, decay_fraction=0.2,
                            grad_clip=1.0, max_steps=steps, schedule_steps=steps, max_tokens=0, max_seconds=0,
                            eval_every=0, eval_batches=0, patience=0, checkpoint_every=0, log_every=1,
                            precision="fp32", compile=False, flops_per_token=1.0, peak_flops=0.0)
    fit(model, objective, optimizers, settings, layout, Distributed(), tmp_path, TrainerState(),
        save=lambda *args: tmp_path)
    return [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_golden_loss_curve(tmp_path):
    losses = run_tiny(tmp_path)
    expected = json.loads(GOLDEN.read_text())
    assert losses == pytest.approx(expected, rel=2e-4, abs=2e-4)
    assert losses[-1] < losses[0] - 1.0  # and it learns the repeated sentence
