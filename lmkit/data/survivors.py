"""Pass one's bookkeeping in the preprocess stage: the documents that survive dedup, routed to their split's
spill in input order, and the counts the stage reports. Every executor feeds it the same decisions."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmkit.data.shards import SPLITS
from lmkit.data.spill import ChunkedSpill, SpillRow
from lmkit.data.split import split_of


@dataclass(frozen=True)
class LanguageCounts:
    """Kept documents and their text bytes per identified language, in one split."""

    documents: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class PassOneResult:
    """What pass one leaves for the tokenizer and pass two: the spills and every count, per split."""

    counts: Counter[str]                   # records, input_bytes, encoding_replaced, validation_duplicates, ...
    dropped: Counter[str]                  # documents dropped, by reason
    label_counts: dict[str, Counter[str]]  # split → label → documents
    spills: dict[str, ChunkedSpill]        # split → its kept documents, closed
    languages: dict[str, LanguageCounts]   # split → per-language counts (empty without --language-id)
    phases: dict[str, float]               # seconds of the executor's own steps, for the stats


class Survivors:
    """Pass one's bookkeeping, in input order: a document is counted as dropped (a duplicate), or spilled to
    its split with its label and language counted."""

    def __init__(self, spill_dir: Path, counts: Counter, val_fraction: float, test_fraction: float,
                 chunk_docs: int, chunk_bytes: int):
        self.counts, self.val_fraction, self.test_fraction = counts, val_fraction, test_fraction
        self.dropped: Counter[str] = Counter()
        self.label_counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
        self.spills = {split: ChunkedSpill(spill_dir, split, chunk_docs, chunk_bytes) for split in SPLITS}
        self.languages = {split: LanguageCounts() for split in SPLITS}
        self.phases: dict[str, float] = {}  # seconds of the executor's own steps, for the stats

    def add(self, row: SpillRow, role: str, duplicate: str | None) -> None:
        """``duplicate``: "exact_duplicate", "near_duplicate" or None (kept)."""
        if duplicate is not None:
            self.dropped[duplicate] += 1
            self.counts["validation_duplicates"] += role == "validation"
            return
        split = "validation" if role == "validation" else split_of(row.digest, self.val_fraction, self.test_fraction)
        self.spills[split].add(row)
        if row.label is not None:
            self.label_counts[split][row.label] += 1
        if row.lang is not None:
            self.languages[split].documents[row.lang] += 1
            self.languages[split].bytes[row.lang] += len(row.text.encode("utf-8"))

    def close(self) -> PassOneResult:
        for spill in self.spills.values():
            spill.close()
        for reason, key in (("invalid_utf8", "encoding_skipped"), ("bad_record", "bad_records")):
            if self.counts[key]:
                self.dropped[reason] += self.counts[key]
        return PassOneResult(self.counts, self.dropped, self.label_counts, self.spills, self.languages, self.phases)
