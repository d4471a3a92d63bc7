"""Sequence classification on a labeled dataset: cross entropy of class logits over a pooled vector. A pair
dataset's examples are two texts framed as one input (framing.format_pair_inputs), cut longest first.

Examples are read at global sample positions (objectives.BatchLayout) with the same seeded
permutations as pretraining windows, so a resumed finetune reads exactly what the uninterrupted
one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.data.framing import (
    TRAIN_CHUNKS_PER_TEXT,
    aggregate_logits,
    chunk_texts,
    default_stride,
    format_examples,
    long_text_settings,
    text_room,
)
from lmkit.data.labeled import IMBALANCE_RATIO, LabeledSplit, labeled_splits
from lmkit.data.packing import LengthGroupedOrder, seeded_generator
from lmkit.data.split import seeded_subset
from lmkit.errors import UserError
from lmkit.evaluation.metrics import classification_metrics
from lmkit.models.classifier import DEFAULT_POOLING, POOLING
from lmkit.training.objectives.base import (
    BatchLayout,
    Built,
    Count,
    ObjectiveInputs,
    ObjectiveSpec,
    dataset_for,
    indices_at,
    register,
)
from lmkit.training.objectives.objective_options import HeldOutOptions
from lmkit.vocab import Specials


@dataclass(frozen=True)
class ClassifyOptions(HeldOutOptions):
    """What classification reads besides the held-out split: the flags of the same names."""

    pooling: str            # the vector the head reads (auto: the architecture's default)
    class_weights: str      # auto, none or balanced
    long_text: str          # cut, mean or max: how a text longer than the window is read
    chunk_stride: int       # tokens between a long text's chunks (0: half a window)
    token_dropout: float    # augmentation: each training token dropped with this probability
    group_by_length: bool   # batches of similar lengths (within a seeded shuffle), or drawn at random


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

    def __init__(self, train: list[list[int]], train_labels: np.ndarray, validation: list[list[int]],
                 val_labels: np.ndarray, n_classes: int, arch: str, seq_len: int, layout: BatchLayout, seed: int,
                 device: torch.device, specials: Specials, class_weights: torch.Tensor | None = None,
                 token_dropout: float = 0.0, teacher_arch: str | None = None, long_text: str = "cut",
                 chunk_stride: int | None = None, train_pairs: list[list[int]] | None = None,
                 val_pairs: list[list[int]] | None = None, group_by_length: bool = False):
        """``train_pairs``, ``val_pairs``: the second texts of a pair dataset (None: single texts)."""
        self.long_text, self.chunk_stride = long_text, chunk_stride  # how predict() reads a long text
        self.train, self.train_labels = train, np.asarray(train_labels, dtype=np.int64)
        self.validation, self.val_labels = validation, np.asarray(val_labels, dtype=np.int64)
        self.train_pairs, self.val_pairs = train_pairs, val_pairs
        self.n_classes, self.arch, self.seq_len = n_classes, arch, seq_len
        self.layout, self.seed, self.device, self.specials = layout, seed, device, specials
        self.class_weights = None if class_weights is None else class_weights.to(device)
        self.token_dropout, self.teacher_arch = token_dropout, teacher_arch
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        # Tokens a step reads, for throughput: the mean formatted length (inputs are padded per batch).
        lengths = [len(t) + 2 for t in train] if train_pairs is None else \
            [len(a) + len(b) + 3 for a, b in zip(train, train_pairs)]
        self.tokens_per_sample = max(1, round(float(np.mean([min(n, seq_len) for n in lengths]))))
        self.order = LengthGroupedOrder(lengths, seed, layout.global_batch) if group_by_length else None

    def _batch(self, token_lists: list[list[int]], labels: np.ndarray, pairs: list[list[int]] | None
               ) -> dict[str, torch.Tensor]:
        batch = {"targets": torch.from_numpy(labels).to(self.device)}
        frames = {"": self.arch}
        if self.teacher_arch is not None and self.teacher_arch != self.arch:  # a teacher reads its own format
            frames["teacher_"] = self.teacher_arch
        for prefix, arch in frames.items():
            idx, mask, types = format_examples(token_lists, pairs, arch, self.seq_len, self.specials, bucketed=True)
            batch[f"{prefix}idx"], batch[f"{prefix}attention_mask"] = idx.to(self.device), mask.to(self.device)
            if types is not None:
                batch[f"{prefix}token_types"] = types.to(self.device)
        return batch

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = indices_at(len(self.train), self.layout, self.seed, step, micro, rank, self.order)
        token_lists = [self.train[i] for i in indices]
        pairs = None if self.train_pairs is None else [self.train_pairs[i] for i in indices]
        if self.token_dropout:
            generator = seeded_generator(self.seed, start)
            token_lists = [drop_tokens(tokens, self.token_dropout, generator) for tokens in token_lists]
            if pairs is not None:
                pairs = [drop_tokens(tokens, self.token_dropout, generator) for tokens in pairs]
        return self._batch(token_lists, self.train_labels[indices], pairs)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "teacher_" if teacher and "teacher_idx" in batch else ""
        logits, _ = model(batch[f"{prefix}idx"], None, batch[f"{prefix}attention_mask"],
                          batch.get(f"{prefix}token_types"))
        return logits, F.cross_entropy(logits.float(), batch["targets"], weight=self.class_weights)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.forward(model, batch)[1]

    @torch.no_grad()
    def predict(self, model: nn.Module, token_lists: list[list[int]], arch: str | None = None,
                pairs: list[list[int]] | None = None) -> np.ndarray:
        """Class probabilities (N, K) of ``token_lists`` (with ``pairs``, their second texts), framed for ``arch``
        (default: the trained model's), a long text by its chunks' aggregated logits (--long-text; a pair is
        cut); batches of chunks of similar length."""
        arch = arch or self.arch
        if pairs is None:
            chunks, owner = chunk_texts(token_lists, arch, self.seq_len, self.long_text, self.chunk_stride)
            lengths = [len(t) for t in chunks]
        else:
            chunks, owner = list(token_lists), np.arange(len(token_lists))
            lengths = [len(a) + len(b) for a, b in zip(token_lists, pairs)]
        order = np.argsort(lengths, kind="stable")
        logits = torch.zeros((len(chunks), self.n_classes), dtype=torch.float32)
        size = self.layout.micro_batch * 2
        for start in range(0, len(order), size):
            chosen = order[start:start + size]
            seconds = None if pairs is None else [pairs[i] for i in chosen]
            idx, mask, types = format_examples([chunks[i] for i in chosen], seconds, arch, self.seq_len,
                                               self.specials, bucketed=True)
            batch, _ = model(idx.to(self.device), None, mask.to(self.device),
                             None if types is None else types.to(self.device))
            logits[torch.as_tensor(chosen)] = batch.float().cpu()
        aggregated = aggregate_logits(logits, owner, len(token_lists), self.long_text)
        return torch.softmax(aggregated.double(), dim=-1).numpy()

    def evaluate(self, model: nn.Module, max_batches: int, arch: str | None = None) -> dict[str, float]:
        """Validation loss, accuracy and macro F1 (lmkit evaluate's definitions); ``arch`` frames the
        inputs for another model than the one trained (a distillation teacher)."""
        if not self.validation:
            return {}
        count = len(self.validation)
        if max_batches:
            count = min(count, max_batches * self.layout.micro_batch)
        pairs = None if self.val_pairs is None else self.val_pairs[:count]
        probabilities = self.predict(model, self.validation[:count], arch, pairs)
        gold = self.val_labels[:count]
        loss = -float(np.mean(np.log(np.maximum(probabilities[np.arange(count), gold], 1e-12))))
        scores = classification_metrics(gold, probabilities.argmax(axis=1), [str(k) for k in range(self.n_classes)])
        return {"val_loss": loss, "val_accuracy": scores["metrics"]["accuracy"],
                "val_f1": scores["metrics"]["macro_f1"]}


def _build(inputs: ObjectiveInputs[ClassifyOptions]) -> Built:
    options, arch = inputs.options, inputs.model_config.arch
    dataset = dataset_for(inputs)
    train, validation, names, made = labeled_splits(dataset, options.val_fraction, inputs.seed)
    if made:
        inputs.notes.append(f"validation: {len(validation.tokens)} examples held out of train (--val-fraction "
                            f"{options.val_fraction}, stratified)")
    chosen = seeded_subset(len(train.tokens), options.max_train_examples, inputs.seed)
    if chosen is not None:
        inputs.notes.append(f"training on {len(chosen)} of {len(train.tokens)} examples (--max-train-examples)")
        train = train.subset(chosen)
    pooling = DEFAULT_POOLING[arch] if options.pooling == "auto" else options.pooling
    if pooling not in POOLING[arch]:
        raise UserError(f"--pooling {pooling}: does not fit a {arch} model (choose {', '.join(POOLING[arch])})")
    pairs = train.pairs is not None
    teacher = inputs.teacher
    if teacher is not None and teacher.labels != names:
        raise UserError(f"--teacher {teacher.artifact.path}: its labels {teacher.labels} differ from the dataset's "
                        f"{names}")
    if teacher is not None and bool((teacher.head or {}).get("pairs")) != pairs:
        raise UserError(f"--teacher {teacher.artifact.path}: classifies {'single texts' if pairs else 'pairs'}, the "
                        f"dataset holds {'pairs' if pairs else 'single texts'}")
    long_text, stride = long_text_settings(None, arch, inputs.seq_len, options.long_text, options.chunk_stride,
                                           pairs)
    stride = stride or default_stride(text_room(arch, inputs.seq_len))
    texts = len(train.tokens)
    per_text = np.bincount(train.labels, minlength=len(names)).astype(np.float64)  # auto weighs by these
    if long_text != "cut":  # every window of a long text is an example with the text's label
        chunks, owner = chunk_texts(train.tokens, arch, inputs.seq_len, long_text, stride, TRAIN_CHUNKS_PER_TEXT)
        train = LabeledSplit(chunks, train.labels[owner])
        if len(chunks) > texts:
            inputs.notes.append(f"long texts: {texts} training texts give {len(chunks)} examples (overlapping "
                                f"windows every {stride} tokens, at most {TRAIN_CHUNKS_PER_TEXT} a text, "
                                f"--long-text {long_text})")
    weights = None
    counts = np.bincount(train.labels, minlength=len(names)).astype(np.float64)
    balanced = options.class_weights == "balanced"
    if options.class_weights == "auto":  # is the dataset imbalanced? (its texts; the weights count examples)
        present = per_text[per_text > 0]
        balanced = bool(present.max() >= IMBALANCE_RATIO * present.min())
        if balanced:
            inputs.notes.append(f"class weights: balanced (--class-weights auto: the largest class has "
                                f"{present.max() / present.min():.1f}x the smallest's examples)")
    if balanced:  # n / (k * n_c), as scikit-learn's "balanced"
        weights = torch.tensor(np.where(counts > 0, len(train.labels) / (len(names) * np.maximum(counts, 1)), 0.0),
                               dtype=torch.float32)
    objective = Classification(train.tokens, train.labels, validation.tokens, validation.labels, len(names), arch,
                               inputs.seq_len, inputs.layout, inputs.seed, inputs.device, inputs.specials, weights,
                               options.token_dropout, teacher.model_config.arch if teacher else None, long_text,
                               stride, train.pairs, validation.pairs, options.group_by_length)
    head = {"labels": names, "pooling": pooling, "max_len": inputs.seq_len, "long_text": long_text}
    if pairs:  # evaluate, generate and serve read two texts per example
        head["pairs"] = True
    if long_text != "cut":
        head["chunk_stride"] = stride
    return Built(objective, {"head": head})


register(ObjectiveSpec("classify", ("gpt", "bert", "lstm"), _build, "sequence classification of a labeled dataset",
                       metric="val_accuracy", metrics=("val_loss", "val_accuracy", "val_f1"), options=ClassifyOptions))
