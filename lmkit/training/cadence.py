"""The parts of a run that decide their own cadence, each asked by train() (loop.py) whether it is due:
the metrics log (every --log-every steps, and the first), validation (every --eval-every steps, and after
the last step when the stage asks) with its best metric and --patience, and the checkpoints (every
--checkpoint-every steps, and when validation improves or a stop is requested).

None of them reads a clock or the device: train() hands them the time and the step's figures.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lmkit.checkpoint import TrainerState
from lmkit.progress import reporter
from lmkit.training.checkpoint import step_tag
from lmkit.training.distributed import Distributed, mean_across_ranks
from lmkit.training.objectives import Objective
from lmkit.training.optim import Optimizers
from lmkit.training.step import StepResult
from lmkit.training.tracking import Tracking

# A checkpoint callback: (tag, state, optimizers) -> path of the committed checkpoint.
SaveCheckpoint = Callable[[str, TrainerState, Optimizers], Path]


class MetricsLog:
    """RUN/metrics.jsonl, written by rank 0: a line per logged training step and per evaluation, each also sent
    to the run's trackers (--track: training.tracking). On resume, the lines after the checkpoint are dropped
    first: the run logs those steps again."""

    def __init__(self, run_dir: Path, env: Distributed, every: int, resume_step: int, now: float,
                 flops_per_token: float = 0.0, peak_flops: float = 0.0, tracker: Tracking | None = None):
        self.path, self.env, self.every = run_dir / "metrics.jsonl", env, every
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        if env.is_main:
            _drop_after(self.path, resume_step)
        self.tracker = tracker if env.is_main else None
        self.window_start, self.window_tokens = now, 0  # throughput since the last logged step

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == 1

    def trained(self, tokens: int) -> None:
        self.window_tokens += tokens

    def training(self, state: TrainerState, result: StepResult, lr: float, now: float,
                 extra: dict[str, float] | None = None) -> str:
        """Log a training step, with the objective's own figures since the last logged step (``extra``: an RL
        run's mean reward ...); returns the progress bar's status."""
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_start, self.window_tokens = now, 0
        record = {"step": state.step, "tokens": state.tokens, "loss": result.loss, "lr": lr,
                  "grad_norm": result.grad_norm, "tokens_per_s": rate, "elapsed_s": round(state.elapsed_seconds, 3)}
        status = f"loss {result.loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s"
        if self.peak_flops > 0:
            record["mfu"] = self.flops_per_token * rate / (self.peak_flops * self.env.world_size)
            status += f" MFU {record['mfu']:.1%}"
        for key, value in (extra or {}).items():
            record[key] = value
            status += f" {key} {value:.3g}"
        self.write(record)
        return status

    def write(self, record: dict) -> None:
        if not self.env.is_main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tracker is not None:
            self.tracker.metrics(record)

    def close(self) -> None:
        """Nothing to release: the run closes its trackers after the final checkpoint (training.run)."""


class Validation:
    """Validates every ``every`` steps (0: never), and after the last step with ``at_end``; keeps the best
    ``metric`` in the trainer state and counts evaluations without improvement (``patience``: 0, never stop).
    ``more``: further figures of the model for the same record (pretrain --eval-tasks: training.downstream)."""

    def __init__(self, objective: Objective, env: Distributed, log: MetricsLog, every: int, batches: int,
                 metric: str, maximize: bool, patience: int, at_end: bool,
                 more: Callable[[nn.Module], dict[str, float]] | None = None):
        self.objective, self.env, self.log = objective, env, log
        self.every, self.batches, self.metric, self.maximize = every, batches, metric, maximize
        self.patience, self.at_end, self.more = patience, at_end, more

    def due(self, step: int, finished: bool) -> bool:
        return bool(self.every) and (step % self.every == 0 or (self.at_end and finished))

    def run(self, model: nn.Module, state: TrainerState, autocast: AbstractContextManager) -> bool:
        """Validate; whether the metric improved (one decision for all ranks: saving the best is collective)."""
        model.eval()
        with autocast:
            metrics = self.objective.evaluate(model, self.batches)
            if metrics and self.more is not None:
                metrics = {**metrics, **self.more(model)}
        model.train()
        if not metrics:
            return False
        metric = mean_across_ranks(torch.tensor(metrics[self.metric], device=self.env.device), self.env).item()
        improved = state.best_metric is None or (metric > state.best_metric if self.maximize
                                                 else metric < state.best_metric)
        if improved:
            state.best_metric, state.best_step, state.evals_since_best = metric, state.step, 0
        else:
            state.evals_since_best += 1
        self.log.write({"step": state.step, "tokens": state.tokens, **metrics})
        summary = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        reporter.info(f"step {state.step}: {summary}" + (" (best)" if improved else ""))
        return improved

    def exhausted(self, state: TrainerState) -> bool:
        """--patience evaluations without improvement: stop early."""
        return bool(self.patience) and state.evals_since_best >= self.patience


class Checkpoints:
    """Saves step checkpoints through ``save`` (the run's saver), at most once a step however many reasons
    ask; ``last``: the last one committed (the one to resume from), for messages."""

    def __init__(self, save: SaveCheckpoint, every: int, last: Path | None):
        self._save, self.every, self.last = save, every, last
        self._saved_step: int | None = None

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, state: TrainerState, optimizers: Optimizers) -> Path:
        if self._saved_step != state.step:
            self.last = self._save(step_tag(state.step), state, optimizers)
            self._saved_step = state.step
        return self.last


def _drop_after(path: Path, resume_step: int) -> None:
    """Drop the lines logged after step ``resume_step``, and a torn last line: a run killed while appending one
    leaves it unterminated, and its step, after the last checkpoint, is logged again."""
    if not path.exists():
        return
    lines = path.read_text().split("\n")[:-1]  # what follows the last newline is empty, or torn
    kept = [line for line in lines if json.loads(line).get("step", 0) <= resume_step]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    partial.replace(path)  # atomic: a crash here leaves the old or the new history, never half
