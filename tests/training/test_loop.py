"""The training loop on a synthetic stream: a golden loss curve guards against silent changes."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit.checkpoint import TrainerState
from lmkit.data.packing import TokenStream
from lmkit.models import build_model
from lmkit.models.presets import model_config
from lmkit.training.distributed import Distributed
from lmkit.training.loop import LoopSettings, train
from lmkit.training.objectives import BatchLayout
from lmkit.training.objectives.language_modeling import CausalLM
from lmkit.training.optim import build_optimizer
from lmkit.training.options import TrainingOptions

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
    options = TrainingOptions(out=str(tmp_path), lr=1e-2, schedule="cosine", warmup_steps=2, min_lr_ratio=0.1,
                              decay_fraction=0.2, grad_clip=1.0, max_steps=steps, max_tokens=0, max_time="",
                              eval_every=0, eval_batches=0, patience=0, checkpoint_every=0, log_every=1,
                              precision="fp32", compile=False)
    settings = LoopSettings(options, step_limit=steps, schedule_steps=steps, warmup_steps=2, eval_every=0,
                            precision="fp32", compile=False, flops_per_token=1.0, peak_flops=0.0)
    train(model, objective, optimizers, settings, layout, Distributed(), tmp_path, TrainerState(),
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
    options = TrainingOptions(out=str(tmp_path), lr=1e-3, schedule="constant", warmup_steps=0, min_lr_ratio=0.1,
                              decay_fraction=0.2, grad_clip=1.0, max_steps=0, max_tokens=0, max_time="1s",
                              eval_every=0, eval_batches=0, patience=0, checkpoint_every=0, log_every=1,
                              precision="fp32", compile=False)
    settings = LoopSettings(options, step_limit=0, schedule_steps=0, warmup_steps=0, eval_every=0,
                            precision="fp32", compile=False, flops_per_token=1.0, peak_flops=0.0)
    optimizers = build_optimizer(model, "adamw", 1e-3, 0.1, (0.9, 0.95))
    real_step = optimizers.step

    def timed_step():
        real_step()
        clock["now"] += 0.25
        assert clock["now"] < 1010.0, "the time limit never stopped the run"

    optimizers.step = timed_step
    state = train(model, objective, optimizers, settings, layout, Distributed(), tmp_path, TrainerState(),
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
    import gc
    import warnings

    import torch.distributed as dist

    from lmkit.training.loop import _data_parallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    wrapped = loss = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = _data_parallel(build_model(model_config("gpt-tiny", 64)))
        assert not [str(w.message) for w in caught if "broadcast_buffers" in str(w.message)]
        _, loss = wrapped(torch.randint(7, 64, (2, 8)), torch.randint(7, 64, (2, 8)))
        loss.backward()
    finally:
        # The DDP reducer goes while its process group lives: freed after destroy_process_group, the group's
        # destructor once waited forever for gloo's threads (a hung suite).
        del wrapped, loss
        gc.collect()
        dist.destroy_process_group()


def test_a_step_reads_the_device_once_and_reduces_the_counts_once(tmp_path, monkeypatch):
    """The loop's promise (loop.py, step.py): one host read a step (the finiteness check, which carries the loss
    and gradient norm on logged steps only) and one reduction of the predicted-token counts, not one per
    micro-batch. Counted as the places a tensor's value reaches Python, outside the model (whose fused loss
    checks its targets, models/loss.py)."""
    import sys

    from lmkit.training import step as step_module

    reads, reductions = [], []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, _name=name):
            if "/lmkit/models/" not in sys._getframe(1).f_code.co_filename:
                reads.append(_name)
            return _real(self, *args)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_sum = step_module.sum_across_ranks
    monkeypatch.setattr(step_module, "sum_across_ranks",
                        lambda value, env: reductions.append(tuple(value.shape)) or real_sum(value, env))
    steps = []
    real_step = step_module.train_step

    def recorded(*args, **kwargs):
        before = len(reads)
        result = real_step(*args, **kwargs)
        steps.append((len(reads) - before, result))
        return result
    monkeypatch.setattr("lmkit.training.loop.train_step", recorded)
    layout = BatchLayout(micro_batch=2, accumulation=3, world_size=1)
    objective = CausalLM(TokenStream((np.arange(5000, dtype=np.int32) % 57) + 7, 1, 5000), None, 16, layout, seed=0,
                         device=torch.device("cpu"))
    model = build_model(model_config("gpt-tiny", 64))
    options = TrainingOptions(out=str(tmp_path), max_steps=6, log_every=3, eval_every=0, checkpoint_every=0,
                              precision="fp32", compile=False)
    settings = LoopSettings(options, step_limit=6, schedule_steps=6, warmup_steps=2, eval_every=0,
                            precision="fp32", compile=False, flops_per_token=1.0, peak_flops=0.0)
    train(model, objective, build_optimizer(model, "adamw", 1e-3, 0.1, (0.9, 0.95)), settings, layout, Distributed(),
          tmp_path, TrainerState(), save=lambda *args: tmp_path)
    assert [n for n, _ in steps] == [1] * 6
    logged = [result.loss is not None and result.grad_norm is not None for _, result in steps]
    assert logged == [True, False, True, False, False, True]  # steps 1, 3 and 6: the log's cadence
    # a step: the count of predicted tokens (a scalar), then the finiteness flags (and the loss, when logged)
    assert reductions == [(), (7,), (), (6,), (), (7,), (), (6,), (), (6,), (), (7,)]
