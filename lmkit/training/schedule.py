"""Learning-rate schedules as pure functions of the step (so resuming needs no scheduler state).

* ``cosine``: linear warmup, then cosine decay to ``min_lr_ratio * lr`` (Loshchilov & Hutter 2017).
* ``linear``: linear warmup, then linear decay to ``min_lr_ratio * lr``.
* ``constant``: linear warmup, then constant.
* ``wsd``: warmup-stable-decay (Hu et al. 2024, MiniCPM): warmup, constant, then a linear decay
  over the last ``decay_fraction`` of the steps.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant", "wsd")


def lr_at(step: int, *, lr: float, max_steps: int, warmup_steps: int, schedule: str,
          min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    floor = lr * min_lr_ratio
    if schedule == "constant" or max_steps <= warmup_steps:
        return lr
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return lr - (lr - floor) * progress
    if schedule == "wsd":
        decay_start = max_steps - int(decay_fraction * max_steps)
        if step < decay_start:
            return lr
        return lr - (lr - floor) * (step - decay_start) / max(1, max_steps - decay_start)
    raise ValueError(f"unknown schedule {schedule!r}")
