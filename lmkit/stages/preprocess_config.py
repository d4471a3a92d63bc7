"""Configuration of ``lmkit preprocess``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmkit.config import flag_name, option, validate
from lmkit.data.cleaning import NORMALIZATIONS
from lmkit.data.filters import FILTERS, FilterThresholds
from lmkit.tokenizer import MIN_VOCAB_SIZE, TOKENIZER_TYPES
from lmkit.units import parse_size

_THRESHOLDS = FilterThresholds()


@dataclass(kw_only=True)
class PreprocessConfig:
    # -- inputs ----------------------------------------------------------------------------
    inputs: list[str] = option([], "Input files, directories or globs; '-' reads stdin.",
                               positional=True, affects_output=False)
    out: str = option(help="Output dataset directory (an artifact; its tokenizer goes in OUT/tokenizer).",
                      short="-o", affects_output=False)
    val_inputs: list[str] = option([], "Explicit validation inputs (comma-separated); replaces --val-fraction.",
                                   affects_output=False)
    input_format: str = option("auto", "Format of the inputs: auto (from the suffix; stdin is txt), txt, jsonl, "
                               "json, csv, tsv, parquet, arrow.",
                               choices=("auto", "txt", "jsonl", "json", "csv", "tsv", "parquet", "arrow"))
    split_by: str = option("paragraph", "How .txt files become documents: one per line, per blank-line "
                           "separated paragraph, or per file.", choices=("line", "paragraph", "file"))
    text_field: str = option("text", "JSON field holding the text; dots reach nested fields (meta.body, turns.0.text). "
                             "Also the column of parquet/arrow inputs.")
    text_column: str = option("text", "CSV/TSV column holding the text.")
    label_field: str | None = option(None, "Keep a label column from this JSON field / CSV, parquet or arrow column "
                                     "(labeled data for finetuning); records without a label are dropped and counted.")
    text_pair_field: str | None = option(None, "Pairs (NLI, paraphrase): also keep a second text from this JSON field "
                                         "(dotted path) / CSV, parquet or arrow column, cleaned like the text. Dedup "
                                         "compares pairs; the filters and --language-id judge the first text. A "
                                         "record without it is a bad record.")
    encoding_errors: str = option("strict", "Invalid UTF-8: strict (error naming file:line), replace (U+FFFD, counted) "
                                  "or skip (drop the record, counted).", choices=("strict", "replace", "skip"))
    skip_bad_records: bool = option(False, "Skip and count malformed records (bad JSON line, missing text field, "
                                    "oversized record) instead of stopping with an error.")
    max_record_bytes: str = option("64MiB", "Largest line/record/document accepted; longer ones are bad records "
                                   "(memory stays bounded).")
    # -- cleaning and filters -----------------------------------------------------------------
    normalization: str = option("NFC", "Unicode normalization.", choices=NORMALIZATIONS)
    strip_html: bool = option(False, "Convert HTML to plain text before cleaning.")
    filters: list[str] = option(list(FILTERS), "Quality filters to apply (comma-separated; 'none' for none): "
                                + ", ".join(FILTERS) + ".", choices=tuple(FILTERS) + ("none",))
    min_chars: int = option(_THRESHOLDS.min_chars, "too_short: drop documents with fewer characters.")
    max_chars: int = option(_THRESHOLDS.max_chars, "too_long: drop documents with more characters.")
    min_words: int = option(_THRESHOLDS.min_words, "few_words: drop documents with fewer words "
                            "(each CJK character counts as a word).")
    max_symbol_ratio: float = option(_THRESHOLDS.max_symbol_ratio, "symbols: drop documents whose ('#' + ellipsis) "
                                     "count per word exceeds this (Gopher).")
    max_repeated_line_fraction: float = option(_THRESHOLDS.max_repeated_line_fraction,
                                               "repeated_lines: drop documents where more than this fraction of "
                                               "lines repeat an earlier line (Gopher).")
    min_alpha_word_fraction: float = option(_THRESHOLDS.min_alpha_word_fraction,
                                            "non_alpha: drop documents where fewer words than this fraction "
                                            "contain a letter (Gopher).")
    # -- dedup and split ------------------------------------------------------------------------
    dedup: bool = option(True, "Drop exact duplicates (same text after cleaning); the first one seen is kept.")
    near_dedup: bool = option(True, "Drop near-duplicates (MinHash + LSH over word 5-grams); the first one "
                              "seen of each cluster is kept.")
    near_dedup_threshold: float = option(0.8, "Estimated Jaccard similarity above which two documents are "
                                         "near-duplicates.")
    val_fraction: float = option(0.02, "Fraction of documents for the validation split, chosen by a hash of "
                                 "each text, so the split is stable when the corpus grows.")
    test_fraction: float = option(0.0, "Fraction of documents for a test split (hash-chosen as well).")
    language_id: bool = option(False, "Identify each document's language (py3langid, shipped with its model: "
                               "lmkit[languages]): a lang column in the shards and counts per language in the "
                               "manifest.")
    languages: list[str] = option([], "Keep only documents identified as these languages (ISO 639-1 codes, "
                                  "comma-separated, e.g. de,en); implies --language-id.")
    # -- tokenizer -----------------------------------------------------------------------------
    tokenizer: str | None = option(None, "Reuse this tokenizer artifact (e.g. another dataset's OUT/tokenizer) "
                                   "instead of training one.", affects_output=False)
    tokenizer_type: str = option("bpe", "SentencePiece model type.", choices=TOKENIZER_TYPES)
    vocab_size: int = option(8000, "Tokenizer vocabulary size, special and byte-fallback pieces included.")
    character_coverage: float = option(0.9995, "Share of characters covered by pieces; the rarest fall back to bytes.")
    tokenizer_sample_size: str = option("64MB", "About this much training text (documents chosen by hash) "
                                        "trains the tokenizer, so a huge corpus cannot exhaust memory.")
    tokenizer_language_alpha: float = option(1.0, "With languages identified: the tokenizer's sample takes each "
                                             "language's share of the text to this power (XLM's alpha): 1 keeps "
                                             "the corpus's proportions, 0 balances the languages equally, 0.3-0.5 "
                                             "favours the rare ones.")
    # -- output --------------------------------------------------------------------------------
    shard_size: str = option("64MB", "Start a new shard file once one reaches this size.")
    shuffle_buffer: int = option(10_000, "Each split is cut, in input order, into chunks of at most this many "
                                 "documents (or --shard-size of text); each chunk is shuffled (seeded), tokenized "
                                 "and written as its own shard(s) by one worker.")
    seed: int = option(0, "Seed for the document shuffle and tokenizer sampling.")
    workers: int = option(0, "Worker processes for cleaning and tokenization; 0 means all cores (with --executor "
                          "ray: the CPUs of the local Ray it starts).", affects_output=False)
    executor: str = option("local", "Where the work runs: local (this machine's processes) or ray (Ray tasks: "
                           "one per input file for reading, cleaning and MinHash, dedup by key partition, "
                           "tokenization; lmkit[ray]). The output is the same, byte for byte.",
                           choices=("local", "ray"), affects_output=False)
    address: str | None = option(None, "--executor ray: the Ray cluster to join, HOST:PORT of its head (see `ray "
                                 "start --head`); default: start Ray on this machine.", affects_output=False)
    force: bool = option(False, "Replace a different artifact already at --out.", affects_output=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.inputs:
            problems.append("INPUTS: give at least one input file, directory, glob or '-'")
        for name in ("max_record_bytes", "shard_size", "tokenizer_sample_size"):
            try:
                if parse_size(getattr(self, name)) <= 0:
                    problems.append(f"{flag_name(name)}: must be positive")
            except ValueError as exc:
                problems.append(f"{flag_name(name)}: {exc}")
        if self.filters == ["none"]:
            self.filters = []
        elif "none" in self.filters:
            problems.append("--filters: 'none' cannot be combined with filter names")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            problems.append("--val-fraction + --test-fraction: must leave documents for training")
        if not 0.0 < self.near_dedup_threshold < 1.0:
            problems.append(f"--near-dedup-threshold: must be in (0, 1), got {self.near_dedup_threshold}")
        if self.vocab_size < MIN_VOCAB_SIZE:
            problems.append(f"--vocab-size: must be at least {MIN_VOCAB_SIZE} (256 byte-fallback pieces, "
                            f"the special tokens and room for text), got {self.vocab_size}")
        if not 0.0 < self.character_coverage <= 1.0:
            problems.append(f"--character-coverage: must be in (0, 1], got {self.character_coverage}")
        for name in ("min_chars", "max_chars", "min_words", "shuffle_buffer"):
            if getattr(self, name) < (1 if name == "shuffle_buffer" else 0):
                problems.append(f"{flag_name(name)}: must be positive, got {getattr(self, name)}")
        if self.max_chars < self.min_chars:
            problems.append("--max-chars: must not be below --min-chars")
        if self.max_symbol_ratio < 0:
            problems.append(f"--max-symbol-ratio: must not be negative, got {self.max_symbol_ratio}")
        for name in ("max_repeated_line_fraction", "min_alpha_word_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(self, name)}")
        if self.tokenizer is not None:  # a reused tokenizer is used as it is: these would do nothing
            for name in ("tokenizer_type", "vocab_size", "character_coverage", "tokenizer_sample_size",
                         "tokenizer_language_alpha"):
                if getattr(self, name) != _DEFAULTS[name]:
                    problems.append(f"{flag_name(name)}: has no effect with --tokenizer (the reused tokenizer "
                                    "is used as it is); drop one of them")
        if self.languages:
            self.language_id = True
        if not 0.0 <= self.tokenizer_language_alpha <= 1.0:
            problems.append(f"--tokenizer-language-alpha: must be in [0, 1], got {self.tokenizer_language_alpha}")
        elif self.tokenizer_language_alpha != 1.0 and not self.language_id:
            problems.append("--tokenizer-language-alpha: balances identified languages; add --language-id or "
                            "--languages")
        if self.address and self.executor != "ray":
            problems.append("--address: joins a Ray cluster; add --executor ray")
        if self.executor == "ray" and "-" in self.inputs:
            problems.append("INPUTS: '-' (stdin) is read by this process; use --executor local for stdin")
        if self.workers < 0:
            problems.append(f"--workers: must be 0 (all cores) or more, got {self.workers}")
        validate(self, problems)

    def thresholds(self) -> FilterThresholds:
        return FilterThresholds(
            min_chars=self.min_chars, max_chars=self.max_chars, min_words=self.min_words,
            max_symbol_ratio=self.max_symbol_ratio, max_repeated_line_fraction=self.max_repeated_line_fraction,
            min_alpha_word_fraction=self.min_alpha_word_fraction)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PreprocessConfig)}
