"""The training loop on a synthetic stream: a golden loss curve guards against silent changes."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit.data.packing import TokenStream
from lmkit.models import build_model
from lmkit.models.presets import model_config
from lmkit.checkpoint import TrainerState
from lmkit.training.distributed import Distributed
from lmkit.training.loop import LoopSettings, fit
from lmkit.training.objectives import BatchLayout
from lmkit.training.objectives.language_modeling import CausalLM
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


class Uniform(torch.nn.Module):
    """Predicts every token with the same probability: loss = ln V exactly."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, idx, targets=None, return_logits=True):  # the objective asks for the loss alone
        logits = torch.zeros(*idx.shape, self.vocab) + self.dummy
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def test_bits_per_byte_of_a_uniform_model_is_log2_v_over_bytes_per_token():
    tokens = np.arange(1000, dtype=np.int32) % 64
    stream = TokenStream(tokens, 10, text_bytes=4000)  # 4 bytes per token
    objective = CausalLM(stream, stream, 16, BatchLayout(4, 1, 1), seed=0, device=torch.device("cpu"))
    metrics = objective.evaluate(Uniform(256), max_batches=0)
    assert metrics["val_loss"] == pytest.approx(math.log(256))
    assert metrics["val_bpb"] == pytest.approx(8 / 4)  # log2(256) bits per token over 4 bytes per token
    assert metrics["val_ppl"] == pytest.approx(256)


def test_max_time_stops_the_run(tmp_path, monkeypatch):
    # The loop's clock is faked: every optimizer step takes exactly 0.25 s, whatever the machine's speed, so the
    # 1 s limit (the only limit set) must stop the run after exactly 4 steps, neither before nor after.
    from types import SimpleNamespace

    import lmkit.training.loop as loop

    clock = {"now": 1000.0}
    monkeypatch.setattr(loop, "time", SimpleNamespace(monotonic=lambda: clock["now"]))
    tokens = (np.arange(5000, dtype=np.int32) % 57) + 7  # ids 7..63 of a 64-token vocabulary
    layout = BatchLayout(micro_batch=2, accumulation=1, world_size=1)
    objective = CausalLM(TokenStream(tokens, 1, 5000), None, 16, layout, seed=0, device=torch.device("cpu"))
    model = build_model(model_config("gpt-tiny", 64))
    settings = LoopSettings(lr=1e-3, schedule="constant", warmup_steps=0, min_lr_ratio=0.1, decay_fraction=0.2,
                            grad_clip=1.0, max_steps=0, schedule_steps=0, max_tokens=0, max_seconds=1.0,
                            eval_every=0, eval_batches=0, patience=0, checkpoint_every=0, log_every=1,
                            precision="fp32", compile=False, flops_per_token=1.0, peak_flops=0.0)
    optimizers = build_optimizer(model, "adamw", 1e-3, 0.1, (0.9, 0.95))
    real_step = optimizers.step

    def timed_step():
        real_step()
        clock["now"] += 0.25
        assert clock["now"] < 1010.0, "the time limit never stopped the run"

    optimizers.step = timed_step
    state = fit(model, objective, optimizers, settings, layout, Distributed(), tmp_path, TrainerState(),
                save=lambda *args: tmp_path)
    assert state.step == 4 and state.elapsed_seconds == 1.0
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(record["step"], record["elapsed_s"]) for record in logged] == [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)]


def test_precision_auto_falls_back_to_fp32_without_native_bf16(monkeypatch):
    from lmkit.devices import resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"


def test_data_parallel_wrapper_raises_no_deprecation_warning(tmp_path):
    """DDP under torchrun printed "`broadcast_buffers` is deprecated" on every run (torch 2.13)."""
    import warnings

    import torch.distributed as dist

    from lmkit.training.loop import _data_parallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = _data_parallel(build_model(model_config("gpt-tiny", 64)))
        assert not [str(w.message) for w in caught if "broadcast_buffers" in str(w.message)]
        _, loss = wrapped(torch.randint(7, 64, (2, 8)), torch.randint(7, 64, (2, 8)))
        loss.backward()
    finally:
        dist.destroy_process_group()
