"""Labeled examples of a dataset artifact, as classification trains on them: token lists (and the second
texts' of a pair dataset) with their label indices, and the validation split made from train when the dataset
has none."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lmkit import artifacts
from lmkit.data.shards import read_split, token_lists
from lmkit.data.split import stratified_split
from lmkit.errors import UserError

# finetune --class-weights auto weighs the loss when the largest class has this many times the smallest's examples.
IMBALANCE_RATIO = 5.0


@dataclass
class LabeledSplit:
    tokens: list[list[int]]
    labels: np.ndarray
    pairs: list[list[int]] | None = None  # each example's second text (a pair dataset); None for single texts

    def subset(self, indices: np.ndarray) -> "LabeledSplit":
        pairs = None if self.pairs is None else [self.pairs[i] for i in indices]
        return LabeledSplit([self.tokens[i] for i in indices], self.labels[indices], pairs)


def _lists(column) -> list[list[int]]:
    offsets, values = token_lists(column)
    values = values.astype(np.int64)
    return [values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def has_pairs(dataset: artifacts.Artifact) -> bool:
    """Whether the dataset's documents are pairs of texts (preprocess --text-pair-field)."""
    return "pairs" in dataset.stats


def read_labeled(dataset: artifacts.Artifact, split: str) -> LabeledSplit:
    tokens: list[list[int]] = []
    pairs: list[list[int]] | None = [] if has_pairs(dataset) else None
    labels: list[np.ndarray] = []
    for table in read_split(dataset, split).tables():
        tokens += _lists(table.column("tokens"))
        if pairs is not None:
            pairs += _lists(table.column("pair_tokens"))
        labels.append(table.column("label").to_numpy())
    return LabeledSplit(tokens, np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64),
                        pairs)


def labeled_splits(dataset: artifacts.Artifact, val_fraction: float, seed: int
                   ) -> tuple[LabeledSplit, LabeledSplit, list[str], bool]:
    """Train and validation examples, the label names, and whether validation was split off train.
    Refuses what cannot train a classifier: no labels, fewer than two classes, unseen validation labels."""
    if "labels" not in dataset.stats:
        raise UserError(f"{dataset.path}: has no labels; classify needs a labeled dataset "
                        "(lmkit preprocess --label-field NAME)")
    names = list(dataset.stats["labels"]["names"])
    train = read_labeled(dataset, "train")
    if not train.tokens:
        raise UserError(f"{dataset.path}: the train split is empty")
    made = False
    validation = read_labeled(dataset, "validation")
    if not validation.tokens:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
        train, validation = train.subset(train_idx), train.subset(val_idx)
        made = True
    seen = set(np.unique(train.labels).tolist())
    if len(seen) < 2:
        only = names[next(iter(seen))]
        raise UserError(f"{dataset.path}: every training example has the label {only!r}; a classifier needs "
                        "at least two classes")
    unseen = sorted(set(np.unique(validation.labels).tolist()) - seen)
    if unseen:
        raise UserError(f"{dataset.path}: validation label {names[unseen[0]]!r} never occurs in training "
                        "(the classifier could never predict it); rebalance the splits")
    return train, validation, names, made
