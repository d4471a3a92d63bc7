"""Finetuning objectives on labeled examples: sequence classification, instruction tuning (SFT),
and distillation from a teacher around any objective. They plug into the same training loop as
pretraining (loop.py); continued pretraining reuses objectives.py's CausalLM and MaskedLM.

Examples are read at global sample positions (objectives.BatchLayout) with the same seeded
permutations as pretraining windows, so a resumed finetune reads exactly what the
uninterrupted one would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.data.packing import IGNORE_INDEX, sample_indices, seeded_generator
from lmkit.evaluation.metrics import classification_metrics
from lmkit.models.classifier import PAD_ID, format_inputs
from lmkit.training.objectives import BatchLayout


@dataclass(frozen=True)
class Count:
    """What the loop and the stage's checks need to know of a set of examples."""

    count: int


def drop_tokens(tokens: list[int], probability: float, generator: torch.Generator) -> list[int]:
    """Token dropout: delete each token with ``probability`` (at least one token is kept)."""
    if probability <= 0 or len(tokens) < 2:
        return tokens
    keep = torch.rand(len(tokens), generator=generator) >= probability
    if not keep.any():
        keep[0] = True
    return [token for token, kept in zip(tokens, keep.tolist()) if kept]


class Classification:
    """Cross entropy of class logits; validation reports loss, accuracy and macro F1."""

    name = "classify"
    archs = ("gpt", "bert", "lstm")

    def __init__(self, train: list[list[int]], train_labels: np.ndarray, validation: list[list[int]],
                 val_labels: np.ndarray, n_classes: int, arch: str, seq_len: int, layout: BatchLayout, seed: int,
                 device: torch.device, class_weights: torch.Tensor | None = None, token_dropout: float = 0.0,
                 teacher_arch: str | None = None):
        self.train, self.train_labels = train, np.asarray(train_labels, dtype=np.int64)
        self.validation, self.val_labels = validation, np.asarray(val_labels, dtype=np.int64)
        self.n_classes, self.arch, self.seq_len = n_classes, arch, seq_len
        self.layout, self.seed, self.device = layout, seed, device
        self.class_weights = None if class_weights is None else class_weights.to(device)
        self.token_dropout, self.teacher_arch = token_dropout, teacher_arch
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        # Tokens a step reads, for throughput: the mean formatted length (inputs are padded per batch).
        self.tokens_per_sample = max(1, round(float(np.mean([min(len(t) + 2, seq_len) for t in train]))))

    def _batch(self, token_lists: list[list[int]], labels: np.ndarray) -> dict[str, torch.Tensor]:
        idx, mask = format_inputs(token_lists, self.arch, self.seq_len)
        batch = {"idx": idx.to(self.device), "attention_mask": mask.to(self.device),
                 "targets": torch.from_numpy(labels).to(self.device)}
        if self.teacher_arch is not None and self.teacher_arch != self.arch:  # a teacher reads its own format
            teacher_idx, teacher_mask = format_inputs(token_lists, self.teacher_arch, self.seq_len)
            batch["teacher_idx"], batch["teacher_mask"] = teacher_idx.to(self.device), teacher_mask.to(self.device)
        return batch

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = sample_indices(len(self.train), self.seed, start, self.layout.micro_batch)
        token_lists = [self.train[i] for i in indices]
        if self.token_dropout:
            generator = seeded_generator(self.seed, start)
            token_lists = [drop_tokens(tokens, self.token_dropout, generator) for tokens in token_lists]
        return self._batch(token_lists, self.train_labels[indices])

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if teacher and "teacher_idx" in batch:
            logits, _ = model(batch["teacher_idx"], None, batch["teacher_mask"])
        else:
            logits, _ = model(batch["idx"], None, batch["attention_mask"])
        return logits, F.cross_entropy(logits.float(), batch["targets"], weight=self.class_weights)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward(model, batch)[1]

    @torch.no_grad()
    def predict(self, model: nn.Module, token_lists: list[list[int]], arch: str | None = None) -> np.ndarray:
        """Class probabilities (N, K) of ``token_lists``, in batches of similar length, framed for ``arch``
        (default: the trained model's)."""
        order = np.argsort([len(t) for t in token_lists], kind="stable")
        probabilities = np.zeros((len(token_lists), self.n_classes), dtype=np.float64)
        size = self.layout.micro_batch * 2
        for start in range(0, len(order), size):
            chosen = order[start:start + size]
            idx, mask = format_inputs([token_lists[i] for i in chosen], arch or self.arch, self.seq_len)
            logits, _ = model(idx.to(self.device), None, mask.to(self.device))
            probabilities[chosen] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        return probabilities

    def evaluate(self, model: nn.Module, max_batches: int, arch: str | None = None) -> dict[str, float]:
        """Validation loss, accuracy and macro F1 (lmkit evaluate's definitions); ``arch`` frames the
        inputs for another model than the one trained (a distillation teacher)."""
        if not self.validation:
            return {}
        count = len(self.validation)
        if max_batches:
            count = min(count, max_batches * self.layout.micro_batch)
        probabilities = self.predict(model, self.validation[:count], arch)
        gold = self.val_labels[:count]
        loss = -float(np.mean(np.log(np.maximum(probabilities[np.arange(count), gold], 1e-12))))
        scores = classification_metrics(gold, probabilities.argmax(axis=1), [str(k) for k in range(self.n_classes)])
        return {"val_loss": loss, "val_accuracy": scores["metrics"]["accuracy"], "val_f1": scores["metrics"]["macro_f1"]}


@dataclass(frozen=True)
class InstructionExample:
    """``tokens`` = prompt (templated) + response + ``</s>``; the first ``prompt_length`` are the prompt."""

    tokens: list[int]
    prompt_length: int


class InstructionTuning:
    """Next-token loss on the response (and its closing ``</s>``) only, never on the prompt."""

    name = "sft"
    archs = ("gpt", "lstm")

    def __init__(self, train: list[InstructionExample], validation: list[InstructionExample], layout: BatchLayout,
                 seed: int, device: torch.device):
        self.train, self.validation = train, validation
        self.layout, self.seed, self.device = layout, seed, device
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        self.tokens_per_sample = max(1, round(float(np.mean([len(e.tokens) - 1 for e in train]))))

    def _batch(self, examples: list[InstructionExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.tokens) for e in examples) - 1
        idx = torch.full((len(examples), width), PAD_ID, dtype=torch.long)
        targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            tokens = torch.tensor(example.tokens, dtype=torch.long)
            n = len(example.tokens) - 1
            idx[row, :n] = tokens[:-1]
            # Position t predicts token t + 1: the first response token is predicted at prompt_length - 1.
            targets[row, example.prompt_length - 1:n] = tokens[example.prompt_length:]
        return {"idx": idx.to(self.device), "targets": targets.to(self.device)}

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = sample_indices(len(self.train), self.seed, start, self.layout.micro_batch)
        return self._batch([self.train[i] for i in indices])

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch["idx"], batch["targets"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward(model, batch)[1]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        if not self.validation:
            return {}
        examples = self.validation
        if max_batches:
            examples = examples[:max_batches * self.layout.micro_batch]
        total_loss, correct, count = 0.0, 0, 0
        size = self.layout.micro_batch
        for start in range(0, len(examples), size):
            batch = self._batch(examples[start:start + size])
            logits, loss = model(batch["idx"], batch["targets"])
            chosen = batch["targets"] != IGNORE_INDEX
            n = int(chosen.sum())
            total_loss += loss.float().item() * n
            correct += int((logits.argmax(-1)[chosen] == batch["targets"][chosen]).sum())
            count += n
        mean = total_loss / max(count, 1)
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_token_accuracy": correct / max(count, 1)}


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
        self.name, self.archs = student_objective.name, student_objective.archs
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
