"""The learning-rate range test (Smith 2017; the fastai "lr_find"): train briefly while the
learning rate grows exponentially, record the smoothed loss, and suggest a rate.

It runs a few optimizer steps on a model that is then thrown away: nothing is saved.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.progress import reporter
from lmkit.training.optim import Optimizers


@dataclass
class RangeTest:
    lrs: list[float]
    losses: list[float]          # smoothed
    suggestion: float            # a tenth of the rate at the lowest smoothed loss
    steepest: float              # the rate where the smoothed loss falls fastest

    def to_dict(self) -> dict:
        return {"lr": self.lrs, "loss": self.losses, "suggestion": self.suggestion, "steepest": self.steepest}


def lr_range_test(model: nn.Module, objective, optimizers: Optimizers, steps: int, precision: str,
                  device: torch.device, start: float = 1e-7, end: float = 1.0, smoothing: float = 0.98) -> RangeTest:
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    lrs, losses = [], []
    average, best = 0.0, math.inf
    model.train()
    with reporter.task("lr range test", total=steps, unit="steps") as task:
        for step in range(steps):
            lr = start * (end / start) ** (step / max(steps - 1, 1))
            optimizers.set_lr(lr)
            batch = objective.train_batch(step, 0, 0)
            with autocast:
                loss = objective.loss(model, batch)
            if not torch.isfinite(loss):
                break
            loss.backward()
            optimizers.step()
            optimizers.zero_grad()
            task.advance(1)
            # An exponential moving average with bias correction, so the first values are not dragged to 0.
            average = smoothing * average + (1 - smoothing) * loss.item()
            smoothed = average / (1 - smoothing ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            if step > 10 and smoothed > 4 * best:  # diverged: larger rates tell nothing more
                break
    if len(losses) < 3:
        raise ValueError("the loss diverged at once; nothing to suggest")
    lowest = min(range(len(losses)), key=losses.__getitem__)
    # The first points' average rests on few losses and wobbles: skip them, as fastai's skip_start does.
    skip = min(10, len(losses) // 5)
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i]))
              for i in range(skip, len(losses) - 1)]
    steepest = skip + min(range(len(slopes)), key=slopes.__getitem__)
    return RangeTest(lrs, losses, lrs[lowest] / 10, lrs[steepest])
