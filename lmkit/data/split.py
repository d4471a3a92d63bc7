"""Train/validation/test assignment by content hash, and seeded streaming shuffles.

A document's split depends only on its own text, never on its position or on the other
documents, so adding documents to a corpus never moves an existing one between splits.
"""

from __future__ import annotations

import random
from typing import Iterable, Iterator, TypeVar

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


def shuffled(items: Iterable[T], buffer_size: int, seed: int) -> Iterator[T]:
    """A deterministic streaming shuffle with a bounded buffer (as tf.data's shuffle):
    memory holds at most ``buffer_size`` items, and the order depends only on the seed."""
    rng = random.Random(seed)
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        index = rng.randrange(buffer_size)
        yield buffer[index]
        buffer[index] = item
    rng.shuffle(buffer)
    yield from buffer
