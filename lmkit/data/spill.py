"""Scratch storage of the preprocess stage: kept documents spilled to Arrow streams between
its two passes, and stdin hashed as it is read (so stdin input has lineage like a file)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, NamedTuple

import pyarrow as pa


class HashingReader:
    """Wraps stdin so its bytes are hashed as they are read (stdin has lineage too)."""

    def __init__(self, raw: BinaryIO):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def readline(self, limit: int = -1) -> bytes:
        data = self.raw.readline(limit)
        self.sha256.update(data)
        self.size += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class SpillRow(NamedTuple):
    """One kept document as spilled between the passes. A NamedTuple, not a dataclass: one is built per document
    in the loops that read and write spills, where it costs about 0.2 us more than a plain tuple (measured)."""

    text: str
    label: str | None
    digest: bytes          # of the text, or of the pair (dedup.pair_digest): the split and the document id
    lang: str | None       # the identified language; None without --language-id
    pair: str | None       # the second text of a pair; None for single texts


class Spill:
    """Kept documents of one split, as an Arrow stream in the temporary directory: text, label, digest, the
    identified language (None without --language-id) and the second text of a pair (None for single texts)."""

    SCHEMA = pa.schema([("text", pa.large_string()), ("label", pa.string()), ("digest", pa.binary(16)),
                        ("lang", pa.string()), ("pair", pa.large_string())])

    def __init__(self, path: Path):
        self.path = path
        self._writer = pa.ipc.new_stream(str(path), self.SCHEMA)
        self._rows: list[SpillRow] = []
        self.count = 0
        self.bytes = 0  # of both texts of a pair

    def add(self, row: SpillRow) -> None:
        self._rows.append(row)
        self.count += 1
        self.bytes += len(row.text.encode("utf-8")) + (len(row.pair.encode("utf-8")) if row.pair is not None else 0)
        if len(self._rows) >= 1024:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            texts, labels, digests, langs, pairs = zip(*self._rows)
            self._writer.write_batch(pa.RecordBatch.from_arrays(
                [pa.array(texts, pa.large_string()), pa.array(labels, pa.string()), pa.array(digests, pa.binary(16)),
                 pa.array(langs, pa.string()), pa.array(pairs, pa.large_string())], schema=self.SCHEMA))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def rows(self) -> Iterator[SpillRow]:
        return read_rows(self.path)


def read_batches(path: Path) -> Iterator[list[SpillRow]]:
    """The rows of a spill file, in order, a written batch (up to 1024 rows) at a time."""
    # Read, not memory-mapped: every mapped page read would stay in this process's resident memory,
    # which then grew with the corpus (the tokenizer's sample scans the whole spill).
    with pa.OSFile(str(path), "rb") as source:
        for batch in pa.ipc.open_stream(source):
            yield list(map(SpillRow._make, zip(*(batch.column(name).to_pylist() for name in Spill.SCHEMA.names),
                                              )))


def read_rows(path: Path) -> Iterator[SpillRow]:
    """The rows of a spill file, in order."""
    for rows in read_batches(path):
        yield from rows


class ChunkedSpill:
    """One split's kept documents in input order, cut into chunk files of at most ``max_docs`` documents or
    about ``max_bytes`` of text (``{split}-NNNNN.arrows``): the units that are shuffled, tokenized and written
    as shards in parallel. Where a chunk ends depends on the documents alone, never on the workers."""

    def __init__(self, directory: Path, split: str, max_docs: int, max_bytes: int):
        self.directory, self.split, self.max_docs, self.max_bytes = directory, split, max_docs, max_bytes
        self.chunks: list[Path] = []
        self._current: Spill | None = None
        self.count = self.bytes = 0

    def add(self, row: SpillRow) -> None:
        current = self._current
        if current is None or current.count >= self.max_docs or current.bytes >= self.max_bytes:
            if current is not None:
                current.close()
            self.chunks.append(self.directory / f"{self.split}-{len(self.chunks):05d}.arrows")
            current = self._current = Spill(self.chunks[-1])
        before = current.bytes
        current.add(row)
        self.count += 1
        self.bytes += current.bytes - before

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def rows(self) -> Iterator[SpillRow]:
        for chunk in self.chunks:
            yield from read_rows(chunk)
