"""The preprocess stage's per-document and per-chunk steps, the same whichever executor runs them: pass one
reads, cleans, filters and keys documents; pass two shuffles, tokenizes and writes one chunk of a split's spill
as shards. ``init_clean``/``clean_batch`` and ``init_tokenize``/``write_chunk`` are what a worker runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmkit.data import sources
from lmkit.data.cleaning import clean_text
from lmkit.data.dedup import NearDeduper, pair_digest, text_digest
from lmkit.data.filters import FilterThresholds, first_failing_filter
from lmkit.data.languages import identify
from lmkit.data.shards import ShardWriter, make_batch, schema
from lmkit.data.spill import HashingReader, SpillRow, read_rows
from lmkit.data.split import doc_id
from lmkit.tokenizer import HFTokenizer, Tokenizer
from lmkit.tokenizer import load as load_tokenizer

BATCH_DOCS = 512
BATCH_BYTES = 1 << 20


# -- records -----------------------------------------------------------------------------------------------
class SourceInput(NamedTuple):
    """An input file (or "-", stdin) and the role of its documents."""

    path: str
    role: str  # "train" or "validation" (an explicit --val-inputs file)


class SourceDocument(NamedTuple):
    """A document as read, before cleaning; sent to the cleaning workers in batches."""

    text: str
    label: str | None
    role: str
    pair: str | None  # the second text (--text-pair-field); None for single texts


class Kept(NamedTuple):
    """A document that passed cleaning and the filters: what dedup and the split decide on."""

    row: SpillRow           # what is spilled if it survives dedup (its digest is the exact-dedup key)
    role: str
    keys: list[int] | None  # MinHash band keys; None without --near-dedup


@dataclass(frozen=True)
class CleanSettings:
    normalization: str
    strip_html: bool
    filters: tuple[str, ...]
    thresholds: FilterThresholds
    near_dedup: bool
    near_threshold: float
    language_id: bool = False
    languages: tuple[str, ...] = ()


# -- reading -----------------------------------------------------------------------------------------------
def documents(path: str, role: str, options: sources.ReadOptions, counts: Counter, dropped: Counter,
              label_required: bool, stdin: HashingReader | None = None) -> Iterator[SourceDocument]:
    """One input's documents; with --label-field, those without a label are counted as dropped. What a local
    worker pool and a Ray map task read alike."""
    for document in sources.iter_documents(path, options, counts, stdin=stdin):
        if label_required and document.label is None:
            dropped["missing_label"] += 1
            continue
        yield SourceDocument(document.text, document.label, role, document.text_pair)


class _HasText(Protocol):
    @property
    def text(self) -> str: ...


_Item = TypeVar("_Item", bound=_HasText)


def batches(items: Iterable[_Item], max_docs: int = BATCH_DOCS, max_bytes: int = BATCH_BYTES
            ) -> Iterator[list[_Item]]:
    """Items grouped by count and by length of text, so a batch is worth sending to a worker."""
    batch: list[_Item] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item.text)
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


# -- pass one: cleaning and filtering ----------------------------------------------------------------------
class Cleaner:
    """Cleans, filters, identifies the language of and keys documents, with one run's settings."""

    def __init__(self, settings: CleanSettings):
        self.settings = settings
        self.near = NearDeduper(settings.near_threshold) if settings.near_dedup else None

    def clean_batch(self, batch: list[SourceDocument]) -> list[Kept | str]:
        """A Kept document, or the reason it is dropped, for each one. A pair's texts are both cleaned; the
        filters and language identification judge the first text, dedup the pair."""
        settings, near = self.settings, self.near
        results: list[Kept | str] = []
        singles: list[int] = []  # results that are single texts: their near-dedup keys come as one batch
        for text, label, role, pair in batch:
            cleaned = clean_text(text, settings.normalization, settings.strip_html)
            if not cleaned:
                results.append("empty")
                continue
            if pair is not None:
                pair = clean_text(pair, settings.normalization, settings.strip_html)
                if not pair:
                    results.append("empty_pair")
                    continue
            reason = first_failing_filter(cleaned, settings.filters, settings.thresholds)
            if reason is not None:
                results.append(reason)
                continue
            lang = identify(cleaned) if settings.language_id else None
            if settings.languages and lang not in settings.languages:
                results.append("other_language")
                continue
            if pair is None:
                keys = None
                digest = text_digest(cleaned)
                singles.append(len(results))
            else:
                keys = near.pair_keys(cleaned, pair) if near is not None else None
                digest = pair_digest(cleaned, pair)
            results.append(Kept(SpillRow(cleaned, label, digest, lang, pair), role, keys))
        if near is not None and singles:
            kept = [results[i] for i in singles]
            for index, keys in zip(singles, near.keys([k.row.text for k in kept])):
                results[index] = results[index]._replace(keys=keys)
        return results


# -- pass two: shuffling, tokenizing and writing a chunk ---------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One chunk of a split's spill: shuffled, tokenized and written as shard(s) by one worker or Ray task."""

    path: Path                            # {tmp}/_spill/{split}-NNNNN.arrows
    split: str
    seed: tuple[int, ...]                 # (seed, split index, chunk number): the shuffle's
    label_names: tuple[str, ...] | None   # the label vocabulary, in id order; None without labels
    language_id: bool
    shard_size: int                       # bytes per shard file
    pairs: bool = False                   # the documents are pairs: a pair_tokens column


@dataclass(frozen=True)
class WrittenChunk:
    shards: list[dict]             # {split}-cNNNNN-MMMMM.arrow files, renamed in order by the stage
    text_bytes: int                # of the first texts, whose tokens the ``tokens`` column holds
    language_tokens: Counter[str]  # empty without --language-id


class ChunkWriter:
    """Writes chunks with one tokenizer."""

    def __init__(self, tokenizer_dir: str, token_type: str):
        self.tokenizer: Tokenizer | HFTokenizer = load_tokenizer(tokenizer_dir)
        self.token_type = token_type

    def write(self, chunk: Chunk) -> WrittenChunk:
        """Shuffle a chunk (a seeded permutation), tokenize it and write it as ``{split}-cNNNNN-MMMMM.arrow``
        shard(s) next to its spill."""
        rows = list(read_rows(chunk.path))
        rows = [rows[i] for i in np.random.default_rng(list(chunk.seed)).permutation(len(rows))]
        label_ids = {name: index for index, name in enumerate(chunk.label_names)} if chunk.label_names else None
        directory = chunk.path.parent.parent  # the artifact's temporary directory (the spill is in _spill/)
        writer = ShardWriter(directory, f"{chunk.split}-c{chunk.path.stem.rsplit('-', 1)[1]}", chunk.shard_size,
                             schema(self.token_type, label_ids is not None, chunk.language_id, chunk.pairs))
        n_bytes, language_tokens = 0, Counter[str]()
        try:
            for batch in batches(rows):
                texts = [row.text for row in batch]
                labels = [label_ids[row.label] for row in batch] if label_ids is not None else None
                langs = [row.lang for row in batch] if chunk.language_id else None
                pairs = [row.pair for row in batch] if chunk.pairs else None
                record_batch = self._tokenize(texts, [doc_id(row.digest) for row in batch], labels, langs, pairs)
                writer.write(record_batch)
                n_bytes += pc.sum(record_batch.column("n_bytes")).as_py()
                if langs is not None:
                    lengths = pc.list_value_length(record_batch.column("tokens")).to_numpy()
                    for lang, count in zip(langs, lengths.tolist()):
                        language_tokens[lang] += count
        finally:
            writer.close()
        return WrittenChunk(writer.shards, n_bytes, language_tokens)

    def _tokenize(self, texts: list[str], ids: list[int], labels: list[int] | None, langs: list[str] | None,
                  pairs: list[str] | None) -> pa.RecordBatch:
        """A shard batch; n_bytes counts the first text, whose tokens the ``tokens`` column holds."""
        tokens = self.tokenizer.encode_batch(texts)
        pair_tokens = self.tokenizer.encode_batch(pairs) if pairs is not None else None
        n_bytes = [len(text.encode("utf-8")) for text in texts]
        return make_batch(ids, tokens, n_bytes, labels, self.token_type, langs, pair_tokens)


# -- worker entry points: state set once per worker process by the pool's initializer ----------------------
class _WorkerState:
    cleaner: Cleaner | None = None
    chunk_writer: ChunkWriter | None = None


_worker = _WorkerState()


def init_clean(settings: CleanSettings) -> None:
    _worker.cleaner = Cleaner(settings)


def clean_batch(batch: list[SourceDocument]) -> list[Kept | str]:
    if _worker.cleaner is None:
        raise RuntimeError("clean_batch: init_clean must run first in this worker")
    return _worker.cleaner.clean_batch(batch)


def init_tokenize(tokenizer_dir: str, token_type: str) -> None:
    _worker.chunk_writer = ChunkWriter(tokenizer_dir, token_type)


def write_chunk(chunk: Chunk) -> WrittenChunk:
    if _worker.chunk_writer is None:
        raise RuntimeError("write_chunk: init_tokenize must run first in this worker")
    return _worker.chunk_writer.write(chunk)
