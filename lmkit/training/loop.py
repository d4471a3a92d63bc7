"""The training loop, shared by pretraining and finetuning, in three parts: :func:`train` owns the cadence
(the stop conditions, signals, and asking the log, validation and checkpoints whether they are due;
cadence.py), :func:`~lmkit.training.step.train_step` the optimizer step, and
:func:`~lmkit.training.step.forward_backward` the micro-batches' forwards and backwards. An objective
supplies batches, loss and validation; the loop knows nothing else about the task.

Exactness: the learning rate is a function of the step, batches are a function of
(seed, step), and checkpoints hold weights, optimizer moments and RNG states, so a run
resumed from a checkpoint computes what the uninterrupted run would have.

What a step costs the host: one read of a small tensor (the finiteness check, with the loss on a logged
step). Over several processes, collectives: the step's token count (no host read), the finiteness check,
and the stop-signal vote (with --max-time, the time vote too).
"""

from __future__ import annotations

import inspect
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

from lmkit.checkpoint import TrainerState
from lmkit.errors import Interrupted
from lmkit.progress import reporter
from lmkit.training.cadence import Checkpoints, MetricsLog, SaveCheckpoint, Validation
from lmkit.training.distributed import Distributed, any_rank
from lmkit.training.objectives import BatchLayout, Objective
from lmkit.training.optim import Optimizers
from lmkit.training.options import TrainingOptions
from lmkit.training.schedule import lr_at
from lmkit.training.step import NonFiniteError, StepModel, train_step
from lmkit.training.tracking import Tracking

__all__ = ["LoopSettings", "NonFiniteError", "SaveCheckpoint", "train"]


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads: the training options as given (rate, schedule, clipping, limits, cadences) and what
    the run skeleton (training.run) resolved from them for this run."""

    options: TrainingOptions
    step_limit: int            # --max-steps, or the stage's default length; 0: no step limit
    schedule_steps: int        # the length decaying schedules decay over
    warmup_steps: int          # --warmup-steps, at most half of schedule_steps
    eval_every: int            # --eval-every, or the stage's default (finetuning: twice an epoch)
    precision: str             # "bf16" or "fp32", from --precision
    compile: bool              # from --compile
    flops_per_token: float
    peak_flops: float          # 0 when unknown: no MFU shown
    sharded: bool = False      # the model is already wrapped with FSDP2 (fully_shard)
    metric: str = "val_loss"   # the validation metric that picks the best checkpoint and early stopping
    eval_at_end: bool = False  # also validate after the last step (finetuning: the best may be the last)
    evaluations: Callable[[nn.Module], dict[str, float]] | None = None  # more validation figures (--eval-tasks)

    @property
    def maximize(self) -> bool:
        """Whether a larger ``metric`` is better (accuracy-like, not a loss)."""
        return self.metric not in ("val_loss", "val_ppl", "val_bpb")

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step + 1``."""
        o = self.options
        return lr_at(step, lr=o.lr, max_steps=self.schedule_steps, warmup_steps=self.warmup_steps,
                     schedule=o.schedule_name(), min_lr_ratio=o.min_lr_ratio, decay_fraction=o.decay_fraction)


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


def train(model: nn.Module, objective: Objective, optimizers: Optimizers, settings: LoopSettings,
          layout: BatchLayout, env: Distributed, run_dir: Path, state: TrainerState,
          save: SaveCheckpoint, last_checkpoint: Path | None = None, tracker: Tracking | None = None) -> TrainerState:
    """Train until a stop condition; returns the final state (the caller saves the final checkpoint). ``tracker``
    receives every logged record too (--track; the caller opens and closes it)."""
    options = settings.options
    log = MetricsLog(run_dir, env, options.log_every, state.step, time.monotonic(), settings.flops_per_token,
                     settings.peak_flops, tracker)
    checkpoints = Checkpoints(save, options.checkpoint_every, last_checkpoint)
    validation = Validation(objective, env, log, settings.eval_every, options.eval_batches, settings.metric,
                            settings.maximize, options.patience, settings.eval_at_end, settings.evaluations)
    parts = _step_model(model, objective, optimizers, settings, env)
    eval_model = model if settings.compile else parts.forward_model
    tokens_per_step = layout.global_batch * objective.tokens_per_sample
    max_seconds = options.max_seconds
    stop = _StopRequest()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic() - state.elapsed_seconds

    def out_of_time() -> bool:
        return max_seconds > 0 and time.monotonic() - started >= max_seconds

    # The bar counts steps towards the step limit, or the token limit in steps; a time limit bounds the ETA.
    total = settings.step_limit or (math.ceil(options.max_tokens / tokens_per_step) if options.max_tokens else None)
    deadline = started + max_seconds if max_seconds > 0 else None
    model.train()
    train_metrics(objective)  # dropped: what a probe before the first step (the precision measurement) recorded
    try:
        with reporter.task("training", total=total, unit="steps", initial=state.step, deadline=deadline) as task:
            # The first check follows from the checkpoint alone; later ones are one decision for all ranks (a time
            # limit reads each rank's clock), since the end-of-run evaluation and saves are collective.
            finished = _limit_reached(state, settings) or out_of_time()
            while not finished:
                lr, logged = settings.lr(state.step), log.due(state.step + 1)
                result = train_step(parts, layout, env, state.step, lr, options.grad_clip, logged, checkpoints.last)
                now = time.monotonic()
                state.step += 1
                state.tokens += tokens_per_step
                state.elapsed_seconds = now - started
                log.trained(tokens_per_step)
                task.advance(1)
                if logged:
                    task.set_status(log.training(state, result, lr, now, train_metrics(objective)))
                finished = _limit_reached(state, settings) or (max_seconds > 0 and any_rank(out_of_time(), env))
                if validation.due(state.step, finished):
                    if validation.run(eval_model, state, parts.autocast):
                        checkpoints.save(state, optimizers)
                    if validation.exhausted(state):
                        reporter.info(f"early stopping at step {state.step}: no improvement in "
                                      f"{options.patience} evaluations (best at step {state.best_step})")
                        break
                if checkpoints.due(state.step):
                    checkpoints.save(state, optimizers)
                # After the saves: a signal that arrives during one stops at the checkpoint it was writing.
                if any_rank(stop.signum is not None, env):
                    saved = checkpoints.save(state, optimizers)
                    reporter.info(f"stopped at step {state.step}; resume with --resume ({saved})")
                    raise Interrupted(stop.signum or signal.SIGTERM)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.close()
    return state


def train_metrics(objective: Objective) -> dict[str, float]:
    """The objective's own figures of the steps since the last logged one (Objective.train_metrics; this rank's)."""
    read = getattr(objective, "train_metrics", None)
    return read() if read is not None else {}


def _step_model(model: nn.Module, objective: Objective, optimizers: Optimizers, settings: LoopSettings,
                env: Distributed) -> StepModel:
    """The model as a step runs it: DDP around it on several unsharded processes, compiled with --compile, under
    bf16 autocast with --precision bf16."""
    ddp = env.enabled and not settings.sharded
    forward_model: nn.Module = _data_parallel(model) if ddp else model
    if settings.compile:  # torch's cache (FX graphs, kernels) makes a later run of the same shapes start fast
        forward_model = torch.compile(forward_model)
        reporter.info("torch.compile: the first step compiles the model (seconds to a minute; cached for next time)")
    autocast = (torch.autocast(device_type=env.device.type, dtype=torch.bfloat16)
                if settings.precision == "bf16" else nullcontext())
    return StepModel(model, forward_model, objective, optimizers, autocast, ddp=ddp, sharded=settings.sharded)


def _data_parallel(model: nn.Module) -> DistributedDataParallel:
    """DDP without a buffer broadcast before every forward: the only buffers are the rotary tables,
    equal on every rank. torch 2.13 renamed the switch (and warns on the old name)."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return DistributedDataParallel(model, forward_sync_buffers=False)
    return DistributedDataParallel(model, broadcast_buffers=False)


def _limit_reached(state: TrainerState, settings: LoopSettings) -> bool:
    """The step or token limit: the same on every rank, no vote needed."""
    return ((settings.step_limit > 0 and state.step >= settings.step_limit)
            or (settings.options.max_tokens > 0 and state.tokens >= settings.options.max_tokens))
