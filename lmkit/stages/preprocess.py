"""``lmkit preprocess``: raw text → cleaned, deduplicated, split, tokenized Arrow shards.

Two streaming passes keep memory bounded whatever the corpus size:

1. read → clean → filter (worker processes) → exact and near dedup → split by text hash
   (main process, in input order, so the first document of a duplicate cluster survives);
   kept texts are spilled to Arrow streams inside the temporary output directory, each split
   cut into chunks of at most ``--shuffle-buffer`` documents or ``--shard-size`` of text.
2. train the tokenizer on a bounded sample of the train spill (or reuse ``--tokenizer``),
   then each chunk, in a worker: shuffle (seeded by split and chunk) → tokenize → its own shard
   file(s); the shards are renamed in order at the end.

The steps themselves (data/preprocess_steps.py) and pass one's bookkeeping (data/survivors.py) sit below
this stage; an executor (data/executors.py: local worker processes, or preprocess_ray.py: Ray tasks), chosen
once from ``--executor``, runs them. Output is identical for any ``--workers`` and either executor; only time
changes.
"""

from __future__ import annotations

import errno
import hashlib
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from lmkit import artifacts
from lmkit import config as config_lib
from lmkit.data import sources
from lmkit.data.executors import Executor, LocalExecutor, ReadJob
from lmkit.data.languages import check_codes, identifier, temperature_shares
from lmkit.data.preprocess_steps import Chunk, CleanSettings, SourceInput, WrittenChunk, init_tokenize, write_chunk
from lmkit.data.shards import SPLITS, shard_name
from lmkit.data.spill import ChunkedSpill, HashingReader
from lmkit.data.survivors import PassOneResult, Survivors
from lmkit.errors import UserError
from lmkit.parallel import available_cores
from lmkit.progress import reporter
from lmkit.stages.preprocess_config import PreprocessConfig
from lmkit.stages.preprocess_ray import RayExecutor
from lmkit.tokenizer import TrainSettings, token_dtype_name, train
from lmkit.tokenizer import load as load_tokenizer
from lmkit.units import parse_size
from lmkit.vocab import SPECIAL_TOKENS


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


_SPILL_DIR = "_spill"
_INTEGER = re.compile(r"-?[0-9]+")
# Settings that shape the dataset's files but not the text the tokenizer is trained on.
_NOT_TOKENIZER_IDENTITY = ("shard_size", "shuffle_buffer")

# --executor: where the work runs, picked once per run. Constructing one starts nothing: Ray is imported,
# joined or started only when the stage enters it.
_EXECUTORS: dict[str, Callable[[PreprocessConfig, int], Executor]] = {
    "local": lambda config, workers: LocalExecutor(workers),
    "ray": lambda config, workers: RayExecutor(config.address, workers),
}


# -- helpers ---------------------------------------------------------------------------------------
def _sample_point(digest: bytes) -> float:
    """A uniform number in [0, 1) from a document digest, independent of its id and split bits."""
    return int.from_bytes(hashlib.blake2b(digest, digest_size=8, person=b"lmkit-tok").digest(), "big") / 2.0**64


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
    all_inputs = [SourceInput(path, "train") for path in inputs] + [SourceInput(path, "validation")
                                                                      for path in val_inputs]
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

    executor = _EXECUTORS[config.executor](config, config.workers or available_cores())
    # entered first: a missing extra or an unreachable --address fails here, before any writing
    with executor, artifacts.ArtifactWriter(config.out, "dataset", recipe, force=config.force) as writer:
        if writer.up_to_date:
            return writer.existing
        stdin_reader = HashingReader(stdin if stdin is not None else sys.stdin.buffer) if uses_stdin else None
        try:
            stats = _build(config, executor, writer.tmp, all_inputs, input_files, parent_tokenizer, stdin_reader,
                           identity)
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


def _build(config: PreprocessConfig, executor: Executor, tmp: Path, all_inputs: list[SourceInput],
           input_files: list[dict], parent_tokenizer: artifacts.Artifact | None, stdin_reader: HashingReader | None,
           identity: dict) -> dict:
    spill_dir = tmp / _SPILL_DIR
    spill_dir.mkdir()
    phases = {}  # seconds per phase, for the stats (where the time goes)
    started = time.monotonic()
    first = _pass_one(config, executor, all_inputs, input_files, spill_dir, stdin_reader)
    counts, dropped, spills, languages = first.counts, first.dropped, first.spills, first.languages
    phases["read_clean_filter_dedup"] = round(time.monotonic() - started, 3)
    phases.update(first.phases)  # --executor ray: its map, dedup and split steps
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
    kept_languages = sum((languages[split].documents for split in SPLITS), Counter())
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
                                                         identity, languages["train"].bytes)
        phases["train_tokenizer"] = round(time.monotonic() - started, 3)
    vocab_size = load_tokenizer(tokenizer_dir).vocab_size  # the model, not what a manifest says
    token_type = token_dtype_name(vocab_size)
    label_names = _label_names(sum(first.label_counts.values(), Counter())) if config.label_field else None

    started = time.monotonic()
    split_stats, language_tokens = _pass_two(config, executor, tmp, spills, tokenizer_dir, token_type, label_names)
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
            "documents": {split: dict(languages[split].documents.most_common()) for split in split_stats},
            "bytes": {split: dict(languages[split].bytes.most_common()) for split in split_stats},
            "tokens": {split: dict(language_tokens[split].most_common()) for split in split_stats}}
    if config.text_pair_field is not None:  # every document is a pair; its second texts' tokens
        stats["pairs"] = {"tokens": sum(s["pair_tokens"] for s in split_stats.values())}
    if label_names is not None:
        stats["labels"] = {"names": label_names,
                           "counts": {split: {name: first.label_counts[split][name] for name in label_names}
                                      for split in split_stats}}
    return stats


def _clean_settings(config: PreprocessConfig) -> CleanSettings:
    return CleanSettings(config.normalization, config.strip_html, tuple(config.filters), config.thresholds(),
                         config.near_dedup, config.near_dedup_threshold, config.language_id, tuple(config.languages))


def _pass_one(config: PreprocessConfig, executor: Executor, all_inputs: list[SourceInput], input_files: list[dict],
              spill_dir: Path, stdin_reader: HashingReader | None) -> PassOneResult:
    counts: Counter = Counter()
    val_fraction = 0.0 if any(role == "validation" for _, role in all_inputs) else config.val_fraction
    survivors = Survivors(spill_dir, counts, val_fraction, config.test_fraction, config.shuffle_buffer,
                          parse_size(config.shard_size))
    job = ReadJob(all_inputs, _read_options(config), _clean_settings(config), exact_dedup=config.dedup,
                  label_required=bool(config.label_field), spill_dir=spill_dir,
                  total_bytes=sum(f["size"] for f in input_files) or None, stdin=stdin_reader)
    executor.read_and_dedup(job, survivors)
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
        for row in train_spill.rows():
            part = shares[row.lang] if shares else share
            if part >= 1.0 or _sample_point(row.digest) < part:
                yield row.text
                if row.pair is not None:
                    yield row.pair
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


def _pass_two(config: PreprocessConfig, executor: Executor, tmp: Path, spills: dict[str, ChunkedSpill],
              tokenizer_dir: Path, token_type: str, label_names: list[str] | None
              ) -> tuple[dict[str, dict], dict[str, Counter]]:
    """Every chunk of every split shuffled, tokenized and written in parallel (worker processes or Ray tasks);
    the shards are then renamed in order to ``{split}-NNNNN.arrow``."""
    language_tokens: dict[str, Counter] = {split: Counter() for split in SPLITS}
    split_stats = {}
    chunks = [Chunk(path, split, (config.seed, index, number), tuple(label_names) if label_names else None,
                    config.language_id, parse_size(config.shard_size), config.text_pair_field is not None)
              for index, split in enumerate(SPLITS) for number, path in enumerate(spills[split].chunks)]
    written: dict[str, list[dict]] = {split: [] for split in SPLITS}
    text_bytes: Counter = Counter()
    with reporter.task("tokenizing", total=sum(spill.count for spill in spills.values()), unit="docs") as task:
        done: Iterator[WrittenChunk] = executor.ordered_map(write_chunk, chunks, initializer=init_tokenize,
                                                            initargs=(str(tokenizer_dir), token_type))
        for chunk, result in zip(chunks, done, strict=True):
            written[chunk.split].extend(result.shards)
            text_bytes[chunk.split] += result.text_bytes
            language_tokens[chunk.split].update(result.language_tokens)
            task.advance(sum(shard["documents"] for shard in result.shards))
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
