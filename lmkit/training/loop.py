"""The training loop, shared by pretraining and finetuning: an objective supplies batches,
loss and validation; this file does optimization, precision, logging, checkpoints, signals.

Exactness: the learning rate is a function of the step, batches are a function of
(seed, step), and checkpoints hold weights, optimizer moments and RNG states, so a run
resumed from a checkpoint computes what the uninterrupted run would have.
"""

from __future__ import annotations

import inspect
import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lmkit.vocab import IGNORE_INDEX
from lmkit.errors import Interrupted, UserError
from lmkit.progress import reporter
from lmkit.checkpoint import TrainerState
from lmkit.training.checkpoint import step_tag
from lmkit.training.distributed import Distributed, any_rank, mean_across_ranks, sum_across_ranks
from lmkit.training.objectives import BatchLayout, Objective
from lmkit.training.optim import Optimizers
from lmkit.training.schedule import lr_at


@dataclass(frozen=True)
class LoopSettings:
    lr: float
    schedule: str
    warmup_steps: int
    min_lr_ratio: float
    decay_fraction: float
    grad_clip: float
    max_steps: int
    schedule_steps: int       # the length decaying schedules decay over
    max_tokens: int
    max_seconds: float
    eval_every: int
    eval_batches: int
    patience: int
    checkpoint_every: int
    log_every: int
    precision: str            # "bf16" or "fp32", already resolved
    compile: bool
    flops_per_token: float
    peak_flops: float         # 0 when unknown: no MFU shown
    sharded: bool = False     # the model is already wrapped with FSDP2 (fully_shard)
    metric: str = "val_loss"  # the validation metric that picks the best checkpoint and early stopping
    maximize: bool = False    # True for accuracy-like metrics
    eval_at_end: bool = False  # also validate after the last step (finetuning: the best may be the last)


class NonFiniteError(UserError):
    """The loss or gradient norm became NaN/inf; training stopped before the optimizer step."""


# A checkpoint callback: (tag, state, optimizers) -> path of the committed checkpoint.
SaveCheckpoint = Callable[[str, TrainerState, Optimizers], Path]


class _StopRequest:
    """First SIGINT/SIGTERM: finish the step, checkpoint, exit. A second SIGINT: stop at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        again = " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT else ""
        reporter.info(f"{signal.Signals(signum).name}: saving a checkpoint after this step{again}")


def _metrics_log(path: Path, resume_step: int) -> None:
    """On resume, drop lines logged after the checkpoint: the run will log them again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= resume_step]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    partial.replace(path)  # atomic: a crash here leaves the old or the new history, never half


def fit(model: nn.Module, objective: Objective, optimizers: Optimizers, settings: LoopSettings,
        layout: BatchLayout, env: Distributed, run_dir: Path, state: TrainerState,
        save: SaveCheckpoint, last_checkpoint: Path | None = None) -> TrainerState:
    """Train until a stop condition; returns the final state (the caller saves the final checkpoint)."""
    metrics_path = run_dir / "metrics.jsonl"
    if env.is_main:
        _metrics_log(metrics_path, state.step)
    board = _tensorboard(run_dir, env)
    ddp = env.enabled and not settings.sharded
    forward_model: nn.Module = _data_parallel(model) if ddp else model
    if settings.compile:  # torch's cache (FX graphs, kernels) makes a later run of the same shapes start fast
        forward_model = torch.compile(forward_model)
        reporter.info("torch.compile: the first step compiles the model (seconds to a minute; cached for next time)")
    autocast = (torch.autocast(device_type=env.device.type, dtype=torch.bfloat16)
                if settings.precision == "bf16" else nullcontext())
    tokens_per_step = layout.global_batch * objective.tokens_per_sample
    stop = _StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic() - state.elapsed_seconds
    window_start, window_tokens = time.monotonic(), 0
    # The bar counts steps towards the step limit, or the token limit in steps; a time limit bounds the ETA.
    total = settings.max_steps or (math.ceil(settings.max_tokens / tokens_per_step) if settings.max_tokens else None)
    deadline = started + settings.max_seconds if settings.max_seconds > 0 else None
    model.train()
    try:
        with reporter.task("training", total=total, unit="steps", initial=state.step, deadline=deadline) as task:
            # The first check follows from the checkpoint alone; later ones are one decision for all ranks (a time
            # limit reads each rank's clock), since the end-of-run evaluation and saves are collective.
            finished = _should_stop(state, settings, started)
            while not finished:
                lr = lr_at(state.step, lr=settings.lr, max_steps=settings.schedule_steps,
                           warmup_steps=settings.warmup_steps, schedule=settings.schedule,
                           min_lr_ratio=settings.min_lr_ratio, decay_fraction=settings.decay_fraction)
                optimizers.set_lr(lr)
                batches = [objective.train_batch(state.step, micro, env.rank) for micro in range(layout.accumulation)]
                # Weight each micro-batch by its share of the step's predicted tokens (over all ranks), so the
                # step's gradient is the mean over tokens however they fall into micro-batches and ranks
                # (masked LM counts vary; for packed causal LM every share is 1 / accumulation).
                counts = [float((batch["targets"] != IGNORE_INDEX).sum()) for batch in batches]
                total = sum_across_ranks(torch.tensor(sum(counts), dtype=torch.float64, device=env.device), env).item()
                loss_sum = torch.zeros((), device=env.device)
                for micro, batch in enumerate(batches):
                    last_micro = micro == layout.accumulation - 1
                    if settings.sharded:  # FSDP2: reduce-scatter gradients on the last micro-batch only
                        model.set_requires_gradient_sync(last_micro)
                    sync = nullcontext() if (last_micro or not ddp) else forward_model.no_sync()
                    with sync:
                        with autocast:
                            loss = objective.loss(forward_model, batch)
                        # Every rank must stop together, or the others wait forever in the all-reduce.
                        if any_rank(not bool(torch.isfinite(loss)), env):
                            raise _non_finite(state.step, "loss", loss.item(), last_checkpoint)
                        # DDP and FSDP average gradients over ranks: hence the world size.
                        (loss * (counts[micro] * env.world_size / max(total, 1.0))).backward()
                    loss_sum += loss.detach().float() * counts[micro]
                clip = settings.grad_clip if settings.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                if hasattr(grad_norm, "full_tensor"):  # a DTensor when the model is sharded
                    grad_norm = grad_norm.full_tensor()
                if not torch.isfinite(grad_norm):
                    optimizers.zero_grad()
                    raise _non_finite(state.step, "gradient norm", grad_norm.item(), last_checkpoint)
                optimizers.step()
                optimizers.zero_grad()
                state.step += 1
                state.tokens += tokens_per_step
                state.elapsed_seconds = time.monotonic() - started
                window_tokens += tokens_per_step
                task.advance(1)
                train_loss = sum_across_ranks(loss_sum, env).item() / max(total, 1.0)
                if state.step % settings.log_every == 0 or state.step == 1:
                    now = time.monotonic()
                    rate = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    record = {"step": state.step, "tokens": state.tokens, "loss": train_loss, "lr": lr,
                              "grad_norm": grad_norm.item(), "tokens_per_s": rate,
                              "elapsed_s": round(state.elapsed_seconds, 3)}
                    status = f"loss {train_loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s"
                    if settings.peak_flops > 0:
                        record["mfu"] = settings.flops_per_token * rate / (settings.peak_flops * env.world_size)
                        status += f" MFU {record['mfu']:.1%}"
                    task.set_status(status)
                    _log(metrics_path, record, env, board)
                finished = any_rank(_should_stop(state, settings, started), env)
                at_end = settings.eval_at_end and finished
                if settings.eval_every and (state.step % settings.eval_every == 0 or at_end):
                    improved = _evaluate(forward_model if not settings.compile else model, objective, settings,
                                         state, metrics_path, env, autocast, board)
                    if improved:
                        last_checkpoint = save(step_tag(state.step), state, optimizers)
                    if settings.patience and state.evals_since_best >= settings.patience:
                        reporter.info(f"early stopping at step {state.step}: no improvement in "
                                      f"{settings.patience} evaluations (best at step {state.best_step})")
                        break
                if settings.checkpoint_every and state.step % settings.checkpoint_every == 0:
                    last_checkpoint = save(step_tag(state.step), state, optimizers)
                if any_rank(stop.signum is not None, env):
                    last_checkpoint = save(step_tag(state.step), state, optimizers)
                    reporter.info(f"stopped at step {state.step}; resume with --resume ({last_checkpoint})")
                    raise Interrupted(stop.signum or signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if board is not None:
            board.close()
    return state


def _data_parallel(model: nn.Module) -> DistributedDataParallel:
    """DDP without a buffer broadcast before every forward: the only buffers are the rotary tables,
    equal on every rank. torch 2.13 renamed the switch (and warns on the old name)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(model, forward_sync_buffers=False)
    return DistributedDataParallel(model, broadcast_buffers=False)


def _should_stop(state: TrainerState, settings: LoopSettings, started: float) -> bool:
    return ((settings.max_steps > 0 and state.step >= settings.max_steps)
            or (settings.max_tokens > 0 and state.tokens >= settings.max_tokens)
            or (settings.max_seconds > 0 and time.monotonic() - started >= settings.max_seconds))


def _non_finite(step: int, what: str, value: float, last_checkpoint: Path | None) -> NonFiniteError:
    kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
    return NonFiniteError(f"step {step + 1}: the {what} is {value} (not finite); stopped before the optimizer "
                          f"step, {kept}; try a lower --lr or --grad-clip")


def _evaluate(model: nn.Module, objective: Objective, settings: LoopSettings, state: TrainerState,
              metrics_path: Path, env: Distributed, autocast, board) -> bool:
    model.eval()
    with autocast:
        metrics = objective.evaluate(model, settings.eval_batches)
    model.train()
    if not metrics:
        return False
    # One decision for all ranks (saving the best is collective).
    metric = mean_across_ranks(torch.tensor(metrics[settings.metric], device=env.device), env).item()
    improved = state.best_metric is None or (metric > state.best_metric if settings.maximize
                                             else metric < state.best_metric)
    if improved:
        state.best_metric, state.best_step, state.evals_since_best = metric, state.step, 0
    else:
        state.evals_since_best += 1
    _log(metrics_path, {"step": state.step, "tokens": state.tokens, **metrics}, env, board)
    summary = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    reporter.info(f"step {state.step}: {summary}" + (" (best)" if improved else ""))
    return improved


def _tensorboard(run_dir: Path, env: Distributed):
    """A TensorBoard writer into RUN/tensorboard when the tensorboard package is installed."""
    if not env.is_main:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # an optional extra: metrics.jsonl has the same figures
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _log(path: Path, record: dict, env: Distributed, board=None) -> None:
    if not env.is_main:
        return
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if board is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                board.add_scalar(key, value, record["step"])
