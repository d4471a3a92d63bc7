"""Train/validation/test assignment by content hash, and the seeded
validation splits and subsets that finetuning makes of data that has none.

A document's split depends only on its own text, never on its position or on the other
documents, so adding documents to a corpus never moves an existing one between splits.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np

T = TypeVar("T")


def split_of(digest: bytes, val_fraction: float, test_fraction: float) -> str:
    """"validation", "test" or "train" from a 16-byte text digest.

    Uses the digest's second half: the first half is the document id, and keeping the two
    independent avoids correlating ids with splits.
    """
    u = int.from_bytes(digest[8:16], "big") / 2.0**64
    if u < val_fraction:
        return "validation"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def doc_id(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


# -- validation splits made at training time (finetuning data without a validation split) -----------

def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): ``fraction`` of each class (at least one example of a class
    with two or more, never all of a class) held out, chosen by a seeded shuffle."""
    rng = np.random.default_rng([seed, 1])
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = 0 if len(members) < 2 else min(len(members) - 1, max(1, round(len(members) * fraction)))
        validation.extend(members[:held])
        train.extend(members[held:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(validation, dtype=np.int64))


def split_off(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """A seeded random ``fraction`` of ``items`` as validation (at least one, if there are two or more, and
    never all of them)."""
    order = np.random.default_rng([seed, 1]).permutation(len(items))
    held = 0 if len(items) < 2 else min(len(items) - 1, max(1, round(len(items) * fraction)))
    chosen = set(order[:held].tolist())
    return ([item for i, item in enumerate(items) if i not in chosen],
            [item for i, item in enumerate(items) if i in chosen])


def seeded_subset(count: int, size: int, seed: int) -> np.ndarray | None:
    """Indices (in order) of a seeded random ``size`` of ``count`` items; None when ``size`` is 0 or covers all."""
    if not size or size >= count:
        return None
    return np.sort(np.random.default_rng([seed, 2]).permutation(count)[:size])
