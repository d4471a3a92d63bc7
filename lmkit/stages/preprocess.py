"""``lmkit preprocess``: raw text → cleaned, deduplicated, split, tokenized Arrow shards.

Two streaming passes keep memory bounded whatever the corpus size:

1. read → clean → filter (worker processes) → exact and near dedup → split by text hash
   (main process, in input order, so the first document of a duplicate cluster survives);
   kept texts are spilled to Arrow streams inside the temporary output directory, each split
   cut into chunks of at most ``--shuffle-buffer`` documents or ``--shard-size`` of text.
2. train the tokenizer on a bounded sample of the train spill (or reuse ``--tokenizer``),
   then each chunk, in a worker: shuffle (seeded by split and chunk) → tokenize → its own shard
   file(s); the shards are renamed in order at the end.

Output is identical for any ``--workers`` and for ``--executor ray`` (preprocess_ray.py, the same
steps as Ray tasks); only time changes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lmkit import artifacts, config as config_lib
from lmkit.data import sources
from lmkit.data.cleaning import clean_text
from lmkit.data.dedup import ExactDeduper, NearDeduper, pair_digest, text_digest
from lmkit.data.filters import FilterThresholds, first_failing_filter
from lmkit.data.languages import check_codes, identify, identifier, temperature_shares
from lmkit.data.shards import SPLITS, ShardWriter, make_batch, schema, shard_name
from lmkit.data.spill import ChunkedSpill, HashingReader, read_rows
from lmkit.data.split import doc_id, split_of
from lmkit.errors import UserError
from lmkit.parallel import available_cores, ordered_map
from lmkit.progress import reporter
from lmkit.stages.preprocess_config import PreprocessConfig
from lmkit.tokenizer import TrainSettings, token_dtype_name, train
from lmkit.tokenizer import load as load_tokenizer
from lmkit.vocab import SPECIAL_TOKENS
from lmkit.units import parse_size


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


_BATCH_DOCS = 512
_BATCH_BYTES = 1 << 20
_SPILL_DIR = "_spill"
_INTEGER = re.compile(r"-?[0-9]+")
# Settings that shape the dataset's files but not the text the tokenizer is trained on.
_NOT_TOKENIZER_IDENTITY = ("shard_size", "shuffle_buffer")


# -- pass 1 workers: cleaning and filtering -------------------------------------------------------
@dataclass(frozen=True)
class _CleanSettings:
    normalization: str
    strip_html: bool
    filters: tuple[str, ...]
    thresholds: FilterThresholds
    near_dedup: bool
    near_threshold: float
    language_id: bool = False
    languages: tuple[str, ...] = ()


_worker_state: dict[str, Any] = {}


class _Kept(NamedTuple):
    """A document that passed cleaning and the filters: what dedup and the split decide on."""

    text: str
    label: str | None
    role: str                  # "train" or "validation" (an explicit --val-inputs file)
    digest: bytes              # of the text, or of the pair (dedup.pair_digest)
    keys: list[int] | None     # MinHash band keys; None without --near-dedup
    lang: str | None           # identified language; None without --language-id
    pair: str | None           # the second text (--text-pair-field); None for single texts


def _init_clean(settings: _CleanSettings) -> None:
    _worker_state["clean"] = settings
    _worker_state["near"] = NearDeduper(settings.near_threshold) if settings.near_dedup else None


def _clean_batch(batch: list[tuple[str, str | None, str, str | None]]) -> list[_Kept | str]:
    """(text, label, role, pair text or None) → a _Kept document or the reason it is dropped. A pair's texts
    are both cleaned; the filters and language identification judge the first text, dedup the pair."""
    settings: _CleanSettings = _worker_state["clean"]
    near: NearDeduper | None = _worker_state["near"]
    results: list[_Kept | str] = []
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
            keys = near.keys(cleaned) if near is not None else None
            digest = text_digest(cleaned)
        else:
            keys = near.pair_keys(cleaned, pair) if near is not None else None
            digest = pair_digest(cleaned, pair)
        results.append(_Kept(cleaned, label, role, digest, keys, lang, pair))
    return results


# -- pass 2 workers: tokenization -----------------------------------------------------------------
def _init_tokenize(tokenizer_dir: str, token_type: str) -> None:
    _worker_state["tokenizer"] = load_tokenizer(tokenizer_dir)
    _worker_state["token_type"] = token_type


def _tokenize_batch(texts: list[str], ids: list[int], labels: list[int] | None, langs: list[str] | None,
                    pairs: list[str] | None) -> pa.RecordBatch:
    """A shard batch; n_bytes counts the first text, whose tokens the ``tokens`` column holds."""
    tokenizer = _worker_state["tokenizer"]
    tokens = tokenizer.encode_batch(texts)
    pair_tokens = tokenizer.encode_batch(pairs) if pairs is not None else None
    n_bytes = [len(text.encode("utf-8")) for text in texts]
    return make_batch(ids, tokens, n_bytes, labels, _worker_state["token_type"], langs, pair_tokens)


# -- helpers ---------------------------------------------------------------------------------------
def _sample_point(digest: bytes) -> float:
    """A uniform number in [0, 1) from a document digest, independent of its id and split bits."""
    return int.from_bytes(hashlib.blake2b(digest, digest_size=8, person=b"lmkit-tok").digest(), "big") / 2.0**64


def _batches(items: Iterator[tuple], max_docs: int = _BATCH_DOCS, max_bytes: int = _BATCH_BYTES) -> Iterator[list]:
    batch, size = [], 0
    for item in items:
        batch.append(item)
        size += len(item[0])
        if len(batch) >= max_docs or size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _label_names(counts: Counter) -> list[str]:
    """Label vocabulary: numeric order when every label is an integer, else lexical."""
    names = list(counts)
    if all(_INTEGER.fullmatch(name) for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _read_options(config: PreprocessConfig) -> sources.ReadOptions:
    return sources.ReadOptions(
        split_by=config.split_by, text_field=config.text_field, text_column=config.text_column,
        label_field=config.label_field, text_pair_field=config.text_pair_field, encoding_errors=config.encoding_errors,
        skip_bad_records=config.skip_bad_records, max_record_bytes=parse_size(config.max_record_bytes),
        input_format=config.input_format)


# -- the stage -------------------------------------------------------------------------------------
def run(config: PreprocessConfig, stdin: BinaryIO | None = None) -> artifacts.Artifact:
    """Run the stage; returns the dataset artifact (``up_to_date`` set when nothing was done)."""
    started = time.monotonic()
    inputs = sources.resolve_inputs(config.inputs, input_format=config.input_format)
    val_inputs = sources.resolve_inputs(config.val_inputs, input_format=config.input_format) \
        if config.val_inputs else []
    parent_tokenizer = artifacts.load(config.tokenizer, kind="tokenizer") if config.tokenizer else None
    if config.language_id:
        identifier()  # a missing extra fails here, before any reading
        check_codes(config.languages)
    all_inputs = [(path, "train") for path in inputs] + [(path, "validation") for path in val_inputs]
    if sum(path == "-" for path, _ in all_inputs) > 1:
        raise UserError("INPUTS: '-' (stdin) can be given only once")
    hashed = [p for p, _ in all_inputs if p != "-"]
    with reporter.task("hashing inputs", total=sum(Path(p).stat().st_size for p in hashed), unit="B") as task:
        input_files = []
        for path, role in all_inputs:
            if path != "-":
                record = artifacts.describe_file(path)
                input_files.append({**record, "role": role})
                task.advance(record["size"])
    parents = [{"role": "tokenizer", "id": parent_tokenizer.id}] if parent_tokenizer else []
    identity = config_lib.identity_dict(config)
    uses_stdin = len(hashed) < len(all_inputs)
    recipe = None if uses_stdin else artifacts.make_recipe("dataset", identity, input_files, parents)

    executor = contextlib.nullcontext()
    if config.executor == "ray":  # a missing extra or an unreachable --address fails here, before any writing
        from lmkit.stages import preprocess_ray

        executor = preprocess_ray.running(config.address, config.workers or available_cores())
    with executor, artifacts.ArtifactWriter(config.out, "dataset", recipe, force=config.force) as writer:
        if writer.up_to_date:
            return writer.existing
        stdin_reader = HashingReader(stdin if stdin is not None else sys.stdin.buffer) if uses_stdin else None
        try:
            stats = _build(config, writer.tmp, all_inputs, input_files, parent_tokenizer, stdin_reader, identity)
            if stdin_reader is not None:  # stdin's hash is known only now
                writer.recipe = artifacts.make_recipe("dataset", identity, input_files, parents)
            tokenizer_parent = (artifacts.describe_parent("tokenizer", parent_tokenizer, writer.out)
                                if parent_tokenizer else
                                {"role": "tokenizer", "path": "tokenizer", "id": stats.pop("_tokenizer_id")})
            stats["seconds"] = round(time.monotonic() - started, 3)
            stats["mb_per_s"] = round(stats["input_bytes"] / 1e6 / max(stats["seconds"], 1e-9), 3)
            stats["tokens_per_s"] = round(stats["tokens"] / max(stats["seconds"], 1e-9), 1)
            inputs_record = {"artifacts": [tokenizer_parent], "files": input_files}
            return writer.commit(config_lib.as_dict(config), inputs_record, stats)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"{config.out}: no space left on device while writing the dataset; "
                                "nothing was written and any earlier artifact there is intact") from None
            raise


def _build(config: PreprocessConfig, tmp: Path, all_inputs: list[tuple[str, str]], input_files: list[dict],
           parent_tokenizer: artifacts.Artifact | None, stdin_reader: HashingReader | None,
           identity: dict) -> dict:
    workers = config.workers or available_cores()
    spill_dir = tmp / _SPILL_DIR
    spill_dir.mkdir()
    phases = {}  # seconds per phase, for the stats (where the time goes)
    started = time.monotonic()
    counts, dropped, label_counts, spills, languages, parts = _pass_one(config, all_inputs, input_files, spill_dir,
                                                                        workers, stdin_reader)
    phases["read_clean_filter_dedup"] = round(time.monotonic() - started, 3)
    phases.update(parts)  # --executor ray: its map, dedup and split steps
    if stdin_reader is not None:  # read to the end now: it has a hash, and lineage like any file
        position = [path for path, _ in all_inputs].index("-")
        input_files.insert(position, {"path": "-", "size": stdin_reader.size,
                                      "sha256": stdin_reader.sha256.hexdigest(), "role": dict(all_inputs)["-"]})
    kept = sum(s.count for s in spills.values())
    if kept == 0:
        reasons = ", ".join(f"{k} {v}" for k, v in dropped.most_common()) or "no documents in the input"
        named = ", ".join(path for path, _ in all_inputs[:3]) + (", ..." if len(all_inputs) > 3 else "")
        raise UserError(f"{named}: no documents left after cleaning and filtering ({reasons}); nothing was written")
    if any(role == "validation" for _, role in all_inputs):
        if spills["validation"].count == 0:
            raise UserError("--val-inputs: no validation document is left (each one was filtered out or "
                            "duplicates a training document); nothing was written")
        if counts["validation_duplicates"]:
            reporter.warn(f"--val-inputs: {counts['validation_duplicates']} validation documents duplicate training "
                          "documents and were dropped (are the validation files among the inputs?)")
    if spills["train"].count == 0:
        raise UserError("every kept document went to validation/test; lower --val-fraction/--test-fraction "
                        "or add inputs")
    kept_languages = sum((languages[split]["documents"] for split in SPLITS), Counter())
    for code in config.languages:
        if not kept_languages[code]:
            found = ", ".join(f"{lang} {n}" for lang, n in kept_languages.most_common(8)) or "none"
            raise UserError(f"--languages {code}: no document is left in {code} after filtering (kept: {found}); "
                            "nothing was written")

    tokenizer_dir = tmp / "tokenizer"
    tokenizer_dir.mkdir()
    if parent_tokenizer is not None:
        for name in [artifacts.MANIFEST, *parent_tokenizer.manifest["files"]]:
            shutil.copy2(parent_tokenizer.path / name, tokenizer_dir / name)
        tokenizer_id = parent_tokenizer.id
        tokenizer_stats = parent_tokenizer.stats
    else:
        started = time.monotonic()
        tokenizer_id, tokenizer_stats = _train_tokenizer(config, tokenizer_dir, spills["train"], input_files,
                                                         identity, languages["train"]["bytes"])
        phases["train_tokenizer"] = round(time.monotonic() - started, 3)
    vocab_size = load_tokenizer(tokenizer_dir).vocab_size  # the model, not what a manifest says
    token_type = token_dtype_name(vocab_size)
    label_names = _label_names(sum(label_counts.values(), Counter())) if config.label_field else None

    started = time.monotonic()
    split_stats, language_tokens = _pass_two(config, tmp, spills, tokenizer_dir, token_type, label_names, workers)
    shutil.rmtree(spill_dir)
    phases["tokenize_write"] = round(time.monotonic() - started, 3)

    total_tokens = sum(s["tokens"] for s in split_stats.values())
    total_bytes = sum(s["bytes"] for s in split_stats.values())
    stats: dict[str, Any] = {
        "documents_in": counts["records"],
        "documents_kept": kept,
        "dropped": dict(sorted(dropped.items())),
        "encoding_replaced": counts["encoding_replaced"],
        "input_bytes": counts["input_bytes"],
        "splits": split_stats,
        "tokens": total_tokens,
        "bytes": total_bytes,
        "tokens_per_byte": round(total_tokens / total_bytes, 6) if total_bytes else 0.0,
        "vocab_size": vocab_size,
        "token_type": token_type,
        "tokenizer": tokenizer_stats,
        "_tokenizer_id": tokenizer_id,
        "phase_seconds": phases,
    }
    if config.language_id:
        stats["languages"] = {
            "identifier": f"py3langid {_version('py3langid')}",
            "documents": {split: dict(languages[split]["documents"].most_common()) for split in split_stats},
            "bytes": {split: dict(languages[split]["bytes"].most_common()) for split in split_stats},
            "tokens": {split: dict(language_tokens[split].most_common()) for split in split_stats}}
    if config.text_pair_field is not None:  # every document is a pair; its second texts' tokens
        stats["pairs"] = {"tokens": sum(s["pair_tokens"] for s in split_stats.values())}
    if label_names is not None:
        stats["labels"] = {"names": label_names,
                           "counts": {split: {name: label_counts[split][name] for name in label_names}
                                      for split in split_stats}}
    return stats


class _Survivors:
    """Pass one's bookkeeping, in input order: a document is counted as dropped (a duplicate), or spilled to
    its split with its label and language counted. Both executors feed it the same decisions."""

    def __init__(self, spill_dir: Path, counts: Counter, val_fraction: float, test_fraction: float,
                 chunk_docs: int, chunk_bytes: int):
        self.counts, self.val_fraction, self.test_fraction = counts, val_fraction, test_fraction
        self.dropped: Counter = Counter()
        self.label_counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
        self.spills = {split: ChunkedSpill(spill_dir, split, chunk_docs, chunk_bytes) for split in SPLITS}
        self.languages = {split: {"documents": Counter(), "bytes": Counter()} for split in SPLITS}
        self.phases: dict[str, float] = {}  # seconds of the executor's own steps, for the stats

    def add(self, text: str, label: str | None, role: str, digest: bytes, lang: str | None,
            duplicate: str | None, pair: str | None = None) -> None:
        """``duplicate``: "exact_duplicate", "near_duplicate" or None (kept); ``pair``: the second text."""
        if duplicate is not None:
            self.dropped[duplicate] += 1
            self.counts["validation_duplicates"] += role == "validation"
            return
        split = "validation" if role == "validation" else split_of(digest, self.val_fraction, self.test_fraction)
        self.spills[split].add(text, label, digest, lang, pair)
        if label is not None:
            self.label_counts[split][label] += 1
        if lang is not None:
            self.languages[split]["documents"][lang] += 1
            self.languages[split]["bytes"][lang] += len(text.encode("utf-8"))

    def close(self):
        for spill in self.spills.values():
            spill.close()
        for reason, key in (("invalid_utf8", "encoding_skipped"), ("bad_record", "bad_records")):
            if self.counts[key]:
                self.dropped[reason] += self.counts[key]
        return self.counts, self.dropped, self.label_counts, self.spills, self.languages, self.phases


def _documents(path: str, role: str, options: sources.ReadOptions, counts: Counter, dropped: Counter,
               label_required: bool, stdin: HashingReader | None = None
               ) -> Iterator[tuple[str, str | None, str, str | None]]:
    """(text, label, role, pair text) of one input's documents; with --label-field, those without a label are
    counted as dropped. What a local worker pool and a Ray map task read alike."""
    for document in sources.iter_documents(path, options, counts, stdin=stdin):
        if label_required and document.label is None:
            dropped["missing_label"] += 1
            continue
        yield document.text, document.label, role, document.text_pair


def _clean_settings(config: PreprocessConfig) -> _CleanSettings:
    return _CleanSettings(config.normalization, config.strip_html, tuple(config.filters), config.thresholds(),
                          config.near_dedup, config.near_dedup_threshold, config.language_id, tuple(config.languages))


def _pass_one(config: PreprocessConfig, all_inputs: list[tuple[str, str]], input_files: list[dict],
              spill_dir: Path, workers: int, stdin_reader: HashingReader | None):
    options = _read_options(config)
    counts: Counter = Counter()
    val_fraction = 0.0 if any(role == "validation" for _, role in all_inputs) else config.val_fraction
    survivors = _Survivors(spill_dir, counts, val_fraction, config.test_fraction, config.shuffle_buffer,
                           parse_size(config.shard_size))
    if config.executor == "ray":
        from lmkit.stages import preprocess_ray

        preprocess_ray.pass_one(config, all_inputs, options, _clean_settings(config), spill_dir, survivors)
        return survivors.close()
    exact = ExactDeduper() if config.dedup else None
    near = NearDeduper(config.near_dedup_threshold) if config.near_dedup else None
    total_bytes = sum(f["size"] for f in input_files) or None

    def raw_documents() -> Iterator[tuple[str, str | None, str, str | None]]:
        for path, role in all_inputs:
            yield from _documents(path, role, options, counts, survivors.dropped, bool(config.label_field),
                                  stdin_reader)

    with reporter.task("reading and cleaning", total=total_bytes, unit="B") as task:
        seen_bytes = 0
        for results in ordered_map(_clean_batch, _batches(raw_documents()), workers,
                                   initializer=_init_clean, initargs=(_clean_settings(config),)):
            task.advance(counts["input_bytes"] - seen_bytes)
            seen_bytes = counts["input_bytes"]
            for kept in results:
                if isinstance(kept, str):
                    survivors.dropped[kept] += 1
                    continue
                duplicate = ("exact_duplicate" if exact is not None and exact.is_duplicate(kept.digest) else
                             "near_duplicate" if near is not None and near.is_duplicate(kept.keys) else None)
                survivors.add(kept.text, kept.label, kept.role, kept.digest, kept.lang, duplicate, kept.pair)
    return survivors.close()


def _train_tokenizer(config: PreprocessConfig, tokenizer_dir: Path, train_spill: ChunkedSpill, input_files: list[dict],
                     identity: dict, language_bytes: Counter) -> tuple[str, dict]:
    settings = TrainSettings(type=config.tokenizer_type, vocab_size=config.vocab_size,
                             character_coverage=config.character_coverage, seed=config.seed)
    # A Bernoulli sample by document hash: streaming, deterministic, about the requested size.
    # (SentencePiece's own sampling bounds lines, not bytes, and reads every line first.)
    budget = parse_size(config.tokenizer_sample_size)
    share = min(1.0, budget / max(train_spill.bytes, 1))
    shares: dict[str, float] = {}
    if config.language_id and config.tokenizer_language_alpha != 1.0:
        # Each language's part of the sample is its share of the text to the power alpha (XLM), taken
        # from its own documents: a rare language is sampled more densely, a common one less.
        parts = temperature_shares(language_bytes, config.tokenizer_language_alpha)
        budget = min(budget, train_spill.bytes)
        shares = {lang: min(1.0, budget * parts[lang] / size) for lang, size in language_bytes.items() if size}

    def chosen() -> Iterator[str]:  # a pair's two texts are sampled together
        for text, _, digest, lang, pair in train_spill.rows():
            part = shares[lang] if shares else share
            if part >= 1.0 or _sample_point(digest) < part:
                yield text
                if pair is not None:
                    yield pair
    reporter.info(f"training a {config.tokenizer_type} tokenizer (vocabulary {config.vocab_size}) on "
                  + (f"a language-balanced sample (alpha {config.tokenizer_language_alpha:g})" if shares
                     else f"{share:.0%}") + f" of {train_spill.count:,} training documents")
    stats = train(chosen(), tokenizer_dir, settings)
    stats["sample_share"] = round(share, 6)
    if shares:
        stats["language_sample_share"] = {lang: round(value, 6) for lang, value in sorted(shares.items())}
    if stats["vocab_size"] < config.vocab_size:
        reporter.warn(f"the corpus supports only {stats['vocab_size']} tokenizer pieces, fewer than "
                      f"--vocab-size {config.vocab_size}")
    tokenizer_config = {"type": settings.type, "vocab_size": settings.vocab_size,
                        "character_coverage": settings.character_coverage,
                        "sample_size": config.tokenizer_sample_size, "seed": settings.seed,
                        "byte_fallback": True, "normalization": "identity (text cleaned by lmkit: "
                        f"{config.normalization})",
                        "special_tokens": {name: {"piece": piece, "id": token_id}
                                           for name, (piece, token_id) in SPECIAL_TOKENS.items()}}
    text_settings = {k: v for k, v in identity.items() if k not in _NOT_TOKENIZER_IDENTITY}
    recipe = artifacts.make_recipe("tokenizer", {"tokenizer": tokenizer_config, "text": text_settings},
                                   input_files, [])
    manifest = artifacts.seal(tokenizer_dir, "tokenizer", recipe, tokenizer_config,
                              {"artifacts": [], "files": input_files}, stats)
    return manifest["id"], stats


@dataclass(frozen=True)
class _Chunk:
    """One chunk of a split's spill: shuffled, tokenized and written as shard(s) by one worker or Ray task."""

    path: str
    split: str
    seed: tuple[int, ...]
    label_names: tuple[str, ...] | None
    language_id: bool
    shard_size: int
    pairs: bool = False  # the documents are pairs: a pair_tokens column


def _write_chunk(chunk: _Chunk) -> tuple[list[dict], int, Counter]:
    """Shuffle a chunk (a seeded permutation), tokenize it and write it as ``{split}-cNNNNN-MMMMM.arrow``
    shard(s) next to its spill; returns (shards, text bytes, tokens per language)."""
    rows = list(read_rows(Path(chunk.path)))
    rows = [rows[i] for i in np.random.default_rng(list(chunk.seed)).permutation(len(rows))]
    label_ids = {name: index for index, name in enumerate(chunk.label_names)} if chunk.label_names else None
    token_type = _worker_state["token_type"]
    directory = Path(chunk.path).parent.parent  # the artifact's temporary directory (the spill is in _spill/)
    writer = ShardWriter(directory, f"{chunk.split}-c{Path(chunk.path).stem.rsplit('-', 1)[1]}", chunk.shard_size,
                         schema(token_type, label_ids is not None, chunk.language_id, chunk.pairs))
    n_bytes, language_tokens = 0, Counter()
    try:
        for batch in _batches(iter(rows)):
            texts = [row[0] for row in batch]
            labels = [label_ids[row[1]] for row in batch] if label_ids is not None else None
            langs = [row[3] for row in batch] if chunk.language_id else None
            pairs = [row[4] for row in batch] if chunk.pairs else None
            record_batch = _tokenize_batch(texts, [doc_id(row[2]) for row in batch], labels, langs, pairs)
            writer.write(record_batch)
            n_bytes += pc.sum(record_batch.column("n_bytes")).as_py()
            if chunk.language_id:
                lengths = pc.list_value_length(record_batch.column("tokens")).to_numpy()
                for lang, count in zip(langs, lengths.tolist()):
                    language_tokens[lang] += count
    finally:
        writer.close()
    return writer.shards, n_bytes, language_tokens


def _pass_two(config: PreprocessConfig, tmp: Path, spills: dict[str, ChunkedSpill], tokenizer_dir: Path,
              token_type: str, label_names: list[str] | None, workers: int) -> tuple[dict[str, dict], dict]:
    """Every chunk of every split shuffled, tokenized and written in parallel (worker processes or Ray tasks);
    the shards are then renamed in order to ``{split}-NNNNN.arrow``."""
    mapper = ordered_map
    if config.executor == "ray":
        from lmkit.stages import preprocess_ray

        mapper = preprocess_ray.ordered_map
    language_tokens: dict[str, Counter] = {split: Counter() for split in SPLITS}
    split_stats = {}
    chunks = [_Chunk(str(path), split, (config.seed, index, number), tuple(label_names) if label_names else None,
                     config.language_id, parse_size(config.shard_size), config.text_pair_field is not None)
              for index, split in enumerate(SPLITS) for number, path in enumerate(spills[split].chunks)]
    written: dict[str, list[dict]] = {split: [] for split in SPLITS}
    text_bytes: Counter = Counter()
    with reporter.task("tokenizing", total=sum(spill.count for spill in spills.values()), unit="docs") as task:
        for chunk, (shards, n_bytes, tokens) in zip(chunks, mapper(_write_chunk, chunks, workers,
                                                                   initializer=_init_tokenize,
                                                                   initargs=(str(tokenizer_dir), token_type))):
            written[chunk.split].extend(shards)
            text_bytes[chunk.split] += n_bytes
            language_tokens[chunk.split].update(tokens)
            task.advance(sum(shard["documents"] for shard in shards))
    for split in SPLITS:
        if not spills[split].count:
            continue
        shards = written[split]
        for number, shard in enumerate(shards):
            final = shard_name(split, number)
            (tmp / shard["file"]).rename(tmp / final)
            shard["file"] = final
        split_stats[split] = {"documents": spills[split].count, "tokens": sum(s["tokens"] for s in shards),
                              "bytes": text_bytes[split], "shards": shards}
        if config.text_pair_field is not None:
            split_stats[split]["pair_tokens"] = sum(s["pair_tokens"] for s in shards)
    return split_stats, language_tokens
