"""Dataset shards: Arrow IPC files of tokenized documents, written with a size bound, read memory-mapped.

One row per document, documents kept whole (packing into windows is the training stage's job):

    id       uint64             stable document id (first 8 bytes of the text's blake2b digest)
    tokens   list<uint16|uint32> token ids, the smallest type that holds the vocabulary
    pair_tokens list (optional)  the second text's token ids (a pair dataset: preprocess --text-pair-field)
    n_bytes  uint32             UTF-8 bytes of the cleaned text, for bits per byte
    label    int32 (optional)   index into the dataset's label names (manifest stats.labels.names)
    lang     string (optional)  identified language (preprocess --language-id)

Files are named ``{split}-{index:05d}.arrow``. The dataset manifest lists each split's shards
(``stats.splits[split].shards``); :func:`read_split` is the one reader of that table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from lmkit.artifacts import Artifact

SPLITS = ("train", "validation", "test")


def schema(token_type: str, with_labels: bool, with_langs: bool = False, with_pairs: bool = False) -> pa.Schema:
    fields = [
        pa.field("id", pa.uint64(), nullable=False),
        pa.field("tokens", pa.list_(getattr(pa, token_type)()), nullable=False),
        pa.field("n_bytes", pa.uint32(), nullable=False),
    ]
    if with_pairs:  # preprocess --text-pair-field: the second text of each pair
        fields.insert(2, pa.field("pair_tokens", pa.list_(getattr(pa, token_type)()), nullable=False))
    if with_labels:
        fields.append(pa.field("label", pa.int32(), nullable=False))
    if with_langs:  # preprocess --language-id: each document's identified language (ISO 639-1)
        fields.append(pa.field("lang", pa.string(), nullable=False))
    return pa.schema(fields)


def make_batch(ids: list[int], tokens: list[list[int]], n_bytes: list[int], labels: list[int] | None,
               token_type: str, langs: list[str] | None = None, pair_tokens: list[list[int]] | None = None
               ) -> pa.RecordBatch:
    columns = [
        pa.array(ids, type=pa.uint64()),
        pa.array(tokens, type=pa.list_(getattr(pa, token_type)())),
        pa.array(n_bytes, type=pa.uint32()),
    ]
    if pair_tokens is not None:
        columns.insert(2, pa.array(pair_tokens, type=pa.list_(getattr(pa, token_type)())))
    if labels is not None:
        columns.append(pa.array(labels, type=pa.int32()))
    if langs is not None:
        columns.append(pa.array(langs, type=pa.string()))
    return pa.RecordBatch.from_arrays(columns, schema=schema(token_type, labels is not None, langs is not None,
                                                             pair_tokens is not None))


def _token_count(batch: pa.RecordBatch, column: str = "tokens") -> int:
    offsets = batch.column(column).offsets  # of the slice: first and last bound its tokens
    return offsets[-1].as_py() - offsets[0].as_py()


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.arrow"


class ShardWriter:
    """Append record batches to ``{split}-NNNNN.arrow`` files of about ``max_bytes`` each:
    batches are cut so a shard exceeds the bound by at most one document."""

    def __init__(self, directory: Path, split: str, max_bytes: int, schema_: pa.Schema):
        self.directory, self.split, self.max_bytes, self.schema = Path(directory), split, max_bytes, schema_
        self.shards: list[dict] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink = None
        self._current_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            if self._writer is None or self._current_bytes >= self.max_bytes:
                self._roll()
            per_row = max(1, batch.nbytes // batch.num_rows)
            take = max(1, min(batch.num_rows, (self.max_bytes - self._current_bytes) // per_row))
            piece, batch = batch.slice(0, take), batch.slice(take)
            self._writer.write_batch(piece)
            self._current_bytes += per_row * take
            shard = self.shards[-1]
            shard["documents"] += piece.num_rows
            shard["tokens"] += _token_count(piece)
            if "pair_tokens" in shard:
                shard["pair_tokens"] += _token_count(piece, "pair_tokens")

    def _roll(self) -> None:
        self._close_current()
        name = shard_name(self.split, len(self.shards))
        self._sink = pa.OSFile(str(self.directory / name), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)
        self._current_bytes = 0
        self.shards.append({"file": name, "documents": 0, "tokens": 0})
        if "pair_tokens" in self.schema.names:
            self.shards[-1]["pair_tokens"] = 0

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def close(self) -> list[dict]:
        """Finish the open shard (also after an error: the caller removes the temporary directory)."""
        self._close_current()
        return self.shards


def read_shard(path: str | Path) -> pa.Table:
    """A shard as a table backed by a memory map (no copy into RAM)."""
    source = pa.memory_map(str(path), "r")
    return pa.ipc.open_file(source).read_all()


def iter_batches(path: str | Path) -> Iterator[pa.RecordBatch]:
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    for index in range(reader.num_record_batches):
        yield reader.get_batch(index)


@dataclass(frozen=True)
class Split:
    """One split of a dataset artifact: its shard files in order, read memory-mapped on demand."""

    name: str
    paths: tuple[Path, ...]
    documents: int
    tokens: int

    def tables(self) -> Iterator[pa.Table]:
        """Each shard as a memory-mapped table (no copy into RAM)."""
        for path in self.paths:
            yield read_shard(path)

    def batches(self) -> Iterator[pa.RecordBatch]:
        for path in self.paths:
            yield from iter_batches(path)


def read_split(dataset: "Artifact", split: str) -> Split:
    """``split`` of ``dataset`` (an empty Split when the dataset has none); each shard's path is checked
    by the artifact (inside the directory, listed in the manifest)."""
    info = dataset.stats["splits"].get(split) or {"shards": [], "documents": 0, "tokens": 0}
    paths = tuple(dataset.file(shard["file"]) for shard in info["shards"])
    return Split(split, paths, int(info.get("documents", 0)), int(info.get("tokens", 0)))


def token_lists(column: pa.ListArray | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, values) of a ``tokens`` column: document i is ``values[offsets[i]:offsets[i + 1]]``,
    a view of the memory-mapped shard."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.offsets.to_numpy(), column.values.to_numpy(zero_copy_only=True)
