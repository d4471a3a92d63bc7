"""What ``lmkit evaluate`` reads: a dataset artifact's split (shards memory-mapped), or raw files
tokenized with the checkpoint's own tokenizer, as token lists with their UTF-8 sizes, ids and gold
labels. Raw text is evaluated as given (no cleaning): its bytes are the bytes bits per byte count.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmkit import artifacts
from lmkit.data import sources
from lmkit.data.shards import SPLITS, read_split, token_lists
from lmkit.errors import UserError
from lmkit.tokenizer import Tokenizer

_ENCODE_BATCH = 512


@dataclass
class Documents:
    """Documents to evaluate, in input order."""

    tokens: list[np.ndarray]       # token ids; views of the memory-mapped shards for a dataset
    n_bytes: list[int]             # UTF-8 bytes of each document's text
    ids: list[int | str]           # a dataset's document id, or "file:line" for raw input
    labels: list[str | None] | None  # gold label names; None when the input has no labels at all
    langs: list[str] | None = None   # identified languages (a dataset preprocessed with --language-id)
    pairs: list[np.ndarray] | None = None  # each document's second text (pairs: --text-pair-field); else None

    def __len__(self) -> int:
        return len(self.tokens)


def choose_split(dataset: artifacts.Artifact, requested: str) -> str:
    """The split to evaluate: as requested, or for "auto" validation, else test. An empty split is refused."""
    splits = dataset.stats["splits"]
    if requested == "auto":
        for split in ("validation", "test"):
            if splits.get(split, {}).get("documents"):
                return split
        raise UserError(f"{dataset.path}: has no validation or test documents to evaluate "
                        "(--split train evaluates the training split; --val-fraction in preprocess makes one)")
    if requested not in SPLITS:
        raise UserError(f"--split {requested}: not one of auto, {', '.join(SPLITS)}")
    if not splits.get(requested, {}).get("documents"):
        present = ", ".join(f"{name} ({info['documents']})" for name, info in splits.items() if info["documents"])
        raise UserError(f"{dataset.path}: the {requested} split is empty (splits with documents: {present or 'none'})")
    return requested


def from_dataset(dataset: artifacts.Artifact, split: str, limit: int = 0) -> Documents:
    """A split's documents, read memory-mapped: token arrays are views of the shard files."""
    label_names = dataset.stats.get("labels", {}).get("names")
    tokens: list[np.ndarray] = []
    n_bytes: list[int] = []
    ids: list[int | str] = []
    labels: list[str | None] | None = [] if label_names else None
    langs: list[str] | None = [] if "languages" in dataset.stats else None
    pairs: list[np.ndarray] | None = [] if "pairs" in dataset.stats else None
    for batch in read_split(dataset, split).batches():
        has_label = "label" in batch.schema.names
        offsets, values = token_lists(batch.column("tokens"))
        tokens += [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        n_bytes += batch.column("n_bytes").to_numpy().tolist()
        ids += batch.column("id").to_numpy().tolist()
        if labels is not None:
            labels += ([label_names[i] for i in batch.column("label").to_numpy()] if has_label
                       else [None] * batch.num_rows)
        if langs is not None:
            langs += batch.column("lang").to_pylist()
        if pairs is not None:
            offsets, values = token_lists(batch.column("pair_tokens"))
            pairs += [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        if limit and len(tokens) >= limit:
            return _cut(Documents(tokens, n_bytes, ids, labels, langs, pairs), limit)
    return Documents(tokens, n_bytes, ids, labels, langs, pairs)


def _cut(documents: Documents, limit: int) -> Documents:
    labels, langs, pairs = (None if values is None else values[:limit]
                            for values in (documents.labels, documents.langs, documents.pairs))
    return Documents(documents.tokens[:limit], documents.n_bytes[:limit], documents.ids[:limit], labels, langs, pairs)


def from_files(paths: list[str], tokenizer: Tokenizer, options: sources.ReadOptions, limit: int = 0) -> Documents:
    """Documents of raw files (any format ``lmkit preprocess`` reads), tokenized with ``tokenizer``."""
    counts: collections.Counter = collections.Counter()
    texts: list[str] = []
    locations: list[str] = []
    labels: list[str | None] = []
    pairs: list[str] = []
    for path in paths:
        for document in sources.iter_documents(path, options, counts):
            if not document.text:
                continue
            texts.append(document.text)
            locations.append(document.location)
            labels.append(document.label)
            if document.text_pair is not None:
                pairs.append(document.text_pair)
            if limit and len(texts) >= limit:
                break
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise UserError(f"{', '.join(paths)}: no documents to evaluate (every input is empty)")
    n_bytes = [len(text.encode("utf-8")) for text in texts]
    has_labels = options.label_field is not None
    return Documents(_encode(texts, tokenizer), n_bytes, list(locations), labels if has_labels else None,
                     pairs=_encode(pairs, tokenizer) if options.text_pair_field is not None else None)


def _encode(texts: list[str], tokenizer: Tokenizer) -> list[np.ndarray]:
    tokens = []
    for start in range(0, len(texts), _ENCODE_BATCH):
        encoded = tokenizer.encode_batch(texts[start:start + _ENCODE_BATCH])
        tokens += [np.asarray(ids, dtype=np.int64) for ids in encoded]
    return tokens


def require_labels(documents: Documents, where: str, label_flag: str) -> list[str]:
    """Every document's gold label, or an error naming the first document without one."""
    if documents.labels is None:
        raise UserError(f"{where}: has no labels; classification metrics need a gold label for every example "
                        f"({label_flag})")
    for document_id, label in zip(documents.ids, documents.labels):
        if label is None:
            raise UserError(f"{document_id}: has no label ({label_flag}); classification metrics need a gold "
                            "label for every example")
    return documents.labels  # type: ignore[return-value]


def require_same_tokenizer(dataset: artifacts.Artifact, checkpoint, named: str | Path, advice: str = "") -> None:
    """Refuse a dataset tokenized by another tokenizer than ``checkpoint``'s (``named``: the path the user gave)."""
    # Both tokenizers are nested copies, verified with the artifact that holds them: compare their ids.
    theirs = artifacts.read_manifest(dataset.path / "tokenizer")["id"]
    ours = artifacts.read_manifest(checkpoint.tokenizer_path)["id"]
    if theirs != ours:
        raise UserError(f"{dataset.path}: was tokenized with another tokenizer ({theirs[:12]}) than {named}'s "
                        f"({ours[:12]}); preprocess the data with `--tokenizer {checkpoint.tokenizer_path}`{advice}")


def is_dataset(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / artifacts.MANIFEST).is_file()
