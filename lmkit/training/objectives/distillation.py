"""Knowledge distillation around any objective: the student also learns a frozen teacher's softened
predictions. Registered as ``distill``, a wrapper: a stage applies it to the objective it built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.training.objectives.base import Built, ObjectiveInputs, ObjectiveSpec, register
from lmkit.vocab import IGNORE_INDEX


@dataclass(frozen=True)
class DistillOptions:
    """What distillation reads (with --teacher): the flags of the same names."""

    temperature: float      # softens both distributions (T)
    distill_alpha: float    # weight of the soft-target loss; 1 - alpha weighs the hard loss


class Distillation:
    """Knowledge distillation (Hinton et al. 2015): ``alpha * T^2 * KL(teacher_T || student_T)
    + (1 - alpha) * hard loss``, the KL over the positions the hard loss counts (every row of a
    classifier; the predicted tokens of a language model). The T^2 keeps the soft term's gradients
    on the scale of the hard term's as T changes. The teacher is frozen and in eval mode."""

    def __init__(self, student_objective, teacher: nn.Module, temperature: float, alpha: float):
        self.inner, self.teacher = student_objective, teacher.eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.name = student_objective.name
        self.tokens_per_sample = student_objective.tokens_per_sample
        self.train_windows, self.val_windows = student_objective.train_windows, student_objective.val_windows

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        return self.inner.train_batch(step, micro, rank)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        student_logits, hard = self.inner.forward(model, batch)
        with torch.no_grad():
            teacher_logits, _ = self.inner.forward(self.teacher, batch, teacher=True)
        if student_logits.dim() == 3:  # language models: the positions that have a target
            chosen = batch["targets"] != IGNORE_INDEX
            student_logits, teacher_logits = student_logits[chosen], teacher_logits[chosen]
        t = self.temperature
        soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1),
                        F.log_softmax(teacher_logits.float() / t, dim=-1), log_target=True, reduction="batchmean")
        return self.alpha * t * t * soft + (1.0 - self.alpha) * hard

    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        return self.inner.evaluate(model, max_batches)


def _build(inputs: ObjectiveInputs[DistillOptions]) -> Built:
    if inputs.inner is None or inputs.teacher is None:
        raise ValueError("distill wraps another objective and needs a teacher")  # a bug in the stage
    teacher = inputs.teacher.inference_model().to(inputs.device)
    return Built(Distillation(inputs.inner, teacher, inputs.options.temperature, inputs.options.distill_alpha))


register(ObjectiveSpec("distill", ("gpt", "bert", "lstm"), _build, "distillation from a teacher's soft targets "
                       "(wraps the task's objective)", options=DistillOptions))
