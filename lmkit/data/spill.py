"""Scratch storage of the preprocess stage: kept documents spilled to Arrow streams between
its two passes, and stdin hashed as it is read (so stdin input has lineage like a file)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator

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


Row = tuple[str, str | None, bytes, str | None, str | None]  # text, label, digest, lang, pair


class Spill:
    """Kept documents of one split, as an Arrow stream in the temporary directory: text, label, digest, the
    identified language (None without --language-id) and the second text of a pair (None for single texts)."""

    SCHEMA = pa.schema([("text", pa.large_string()), ("label", pa.string()), ("digest", pa.binary(16)),
                        ("lang", pa.string()), ("pair", pa.large_string())])

    def __init__(self, path: Path):
        self.path = path
        self._writer = pa.ipc.new_stream(str(path), self.SCHEMA)
        self._rows: list[Row] = []
        self.count = 0
        self.bytes = 0  # of both texts of a pair

    def add(self, text: str, label: str | None, digest: bytes, lang: str | None = None, pair: str | None = None
            ) -> None:
        self._rows.append((text, label, digest, lang, pair))
        self.count += 1
        self.bytes += len(text.encode("utf-8")) + (len(pair.encode("utf-8")) if pair is not None else 0)
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

    def rows(self) -> Iterator[Row]:
        return read_rows(self.path)


def read_rows(path: Path) -> Iterator[Row]:
    """The (text, label, digest, lang, pair) rows of a spill file, in order."""
    # Read, not memory-mapped: every mapped page read would stay in this process's resident memory,
    # which then grew with the corpus (the tokenizer's sample scans the whole spill).
    with pa.OSFile(str(path), "rb") as source:
        for batch in pa.ipc.open_stream(source):
            yield from zip(*(batch.column(name).to_pylist() for name in Spill.SCHEMA.names))


class ChunkedSpill:
    """One split's kept documents in input order, cut into chunk files of at most ``max_docs`` documents or
    about ``max_bytes`` of text (``{split}-NNNNN.arrows``): the units that are shuffled, tokenized and written
    as shards in parallel. Where a chunk ends depends on the documents alone, never on the workers."""

    def __init__(self, directory: Path, split: str, max_docs: int, max_bytes: int):
        self.directory, self.split, self.max_docs, self.max_bytes = directory, split, max_docs, max_bytes
        self.chunks: list[Path] = []
        self._current: Spill | None = None
        self.count = self.bytes = 0

    def add(self, text: str, label: str | None, digest: bytes, lang: str | None = None, pair: str | None = None
            ) -> None:
        current = self._current
        if current is None or current.count >= self.max_docs or current.bytes >= self.max_bytes:
            if current is not None:
                current.close()
            self.chunks.append(self.directory / f"{self.split}-{len(self.chunks):05d}.arrows")
            current = self._current = Spill(self.chunks[-1])
        before = current.bytes
        current.add(text, label, digest, lang, pair)
        self.count += 1
        self.bytes += current.bytes - before

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

    def rows(self) -> Iterator[Row]:
        for chunk in self.chunks:
            yield from read_rows(chunk)
