"""One optimizer step: :func:`train_step` draws the step's micro-batches, runs :func:`forward_backward` on
them, checks once that the step is finite and updates the weights. When to step, log, evaluate and save is
train()'s (loop.py).

Reductions stay on the device: the micro-batches' predicted tokens are summed over the ranks in one
collective and become the loss weights there, the loss is summed there, and the host reads one small tensor
a step, the finiteness check, which on a logged step also carries the loss and the gradient norm.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmkit.errors import UserError
from lmkit.training.distributed import Distributed, sum_across_ranks
from lmkit.training.objectives import BatchLayout, Objective
from lmkit.training.optim import Optimizers
from lmkit.vocab import IGNORE_INDEX


class NonFiniteError(UserError):
    """The loss or gradient norm became NaN/inf; training stopped before the optimizer step."""


@dataclass(frozen=True)
class StepModel:
    """What a step trains and how: the model, what runs its forward, the objective, the optimizers, the
    precision's autocast and the gradient synchronization that accumulation skips."""

    model: nn.Module               # as built: its parameters are clipped; FSDP2 switches its gradient sync
    forward_model: nn.Module       # runs the forwards: the model wrapped in DDP and/or torch.compile
    objective: Objective
    optimizers: Optimizers
    autocast: AbstractContextManager  # torch.autocast for bf16, else a null context
    ddp: bool = False              # forward_model is DDP: no all-reduce on the micro-batches before the last
    sharded: bool = False          # model is FSDP2: reduce-scatter on the last micro-batch only


@dataclass(frozen=True)
class StepResult:
    """What the host learned of a step: on a logged step the loss and gradient norm, else nothing."""

    loss: float | None = None      # the mean over the step's predicted tokens, over all ranks
    grad_norm: float | None = None  # the global gradient norm before clipping


def train_step(parts: StepModel, layout: BatchLayout, env: Distributed, step: int, lr: float, grad_clip: float,
               logged: bool, last_checkpoint: Path | None) -> StepResult:
    """Optimizer step ``step + 1`` at learning rate ``lr``; ``logged``: bring its loss and gradient norm to the
    host. A non-finite loss or gradient norm stops before the update, naming ``last_checkpoint``."""
    parts.optimizers.set_lr(lr)
    batches = [parts.objective.train_batch(step, micro, env.rank) for micro in range(layout.accumulation)]
    weights, counts, total = token_weights(batches, env)
    loss_sum = forward_backward(parts, batches, weights, counts)
    clip = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), clip)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor when the model is sharded
        grad_norm = grad_norm.full_tensor()
    problem, result = _finite_check(loss_sum, grad_norm, total, env, logged)
    if problem is not None:
        parts.optimizers.zero_grad()
        what, value = problem
        kept = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                else "no checkpoint was written yet")
        raise NonFiniteError(f"step {step + 1}: the {what} is {value} (not finite); stopped before the optimizer "
                             f"step, {kept}; try a lower --lr or --grad-clip")
    parts.optimizers.step()
    parts.optimizers.zero_grad()
    return result


def token_weights(batches: list[dict[str, torch.Tensor]], env: Distributed
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(weight, predicted tokens) of each micro-batch and the step's predicted tokens over all ranks (at least 1),
    on the device, in one collective. A micro-batch's mean loss is weighted by its share of the step's tokens,
    so that the step's gradient is the mean over tokens however they fall into micro-batches and ranks (masked
    LM's counts vary; for packed causal LM every weight is 1 / accumulation); DDP and FSDP average gradients
    over the ranks, hence the world size."""
    counts = torch.stack([(batch["targets"] != IGNORE_INDEX).sum() for batch in batches]).to(torch.float64)
    total = sum_across_ranks(counts.sum(), env).clamp(min=1.0)
    # float64 as Python's floats were (the same rounding to float32 when a loss is scaled by its weight)
    return (counts * env.world_size / total).float(), counts.float(), total


def forward_backward(parts: StepModel, batches: list[dict[str, torch.Tensor]], weights: torch.Tensor,
                     counts: torch.Tensor) -> torch.Tensor:
    """The forward and backward of each micro-batch, its loss scaled by its weight, gradients synchronized
    over the ranks on the last one only; returns the sum of loss x predicted tokens (on the device)."""
    loss_sum = torch.zeros((), device=counts.device)
    last = len(batches) - 1
    for micro, batch in enumerate(batches):
        if parts.sharded:  # FSDP2: reduce-scatter gradients on the last micro-batch only
            parts.model.set_requires_gradient_sync(micro == last)
        sync = parts.forward_model.no_sync() if parts.ddp and micro != last else nullcontext()
        with sync:
            with parts.autocast:
                loss = parts.objective.loss(parts.forward_model, batch)
            (loss.float() * weights[micro]).backward()
        loss_sum += loss.detach().float() * counts[micro]
    return loss_sum


def _finite_check(loss_sum: torch.Tensor, grad_norm: torch.Tensor, total: torch.Tensor, env: Distributed,
                  logged: bool) -> tuple[tuple[str, str] | None, StepResult]:
    """The step's one finiteness check, after backward and before the update: which of the loss (on any rank)
    and the gradient norm is NaN or infinite, summed over the ranks so that every rank stops alike (or the
    others would wait forever in the next collective), and read by the host once; a logged step's loss (summed
    over the ranks) travels in the same collective and read."""
    flags = torch.stack([loss_sum.isnan(), loss_sum.isposinf(), loss_sum.isneginf(),
                         grad_norm.isnan(), grad_norm.isposinf(), grad_norm.isneginf()]).float()
    reduced = sum_across_ranks(torch.cat([flags, loss_sum.float()[None]]) if logged else flags, env)
    if logged:  # the loss over the step's tokens in float64, as the host computed it from the float32 sum
        read = torch.cat([reduced[:6].double(), (reduced[6].double() / total)[None], grad_norm.double()[None]])
    else:
        read = reduced
    values = read.tolist()  # the step's one host sync
    problem = None
    for what, (nan, positive, negative) in (("loss", values[0:3]), ("gradient norm", values[3:6])):
        if nan or positive or negative:
            problem = (what, "nan" if nan else "inf" if positive else "-inf")
            break
    return problem, (StepResult(*values[6:8]) if logged else StepResult())
