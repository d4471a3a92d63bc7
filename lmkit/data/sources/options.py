"""What reading is asked to do (ReadOptions, validated as CLI flags) and what it yields (RawDocument)."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.errors import ConfigError

INPUT_FORMATS = ("auto", "txt", "jsonl", "json", "csv", "tsv", "parquet", "arrow")
SPLIT_MODES = ("line", "paragraph", "file")
ENCODING_ERRORS = ("strict", "replace", "skip")


@dataclass(frozen=True)
class ReadOptions:
    """How input files become documents; each field is the CLI flag of the same name."""

    split_by: str = "paragraph"          # txt only: "line", "paragraph" (blank-line separated) or "file"
    text_field: str = "text"             # dotted path into JSON records ("meta.body", "turns.0.text"), or a
    #                                      parquet/arrow column (dotted = struct field)
    text_column: str = "text"            # csv/tsv column holding the text
    label_field: str | None = None       # dotted path / column of a label; None = no labels
    text_pair_field: str | None = None   # dotted path / column of a second text (pairs); None = single texts
    encoding_errors: str = "strict"      # invalid UTF-8: "strict" (stop), "replace" (U+FFFD) or "skip" (drop record)
    skip_bad_records: bool = False       # skip and count malformed/oversized records instead of stopping
    max_record_bytes: int = 64 * 2**20   # a line / record / paragraph / whole-file doc larger than this is bad
    input_format: str = "auto"           # "auto" (from the suffix; txt for stdin) or one of INPUT_FORMATS

    def __post_init__(self) -> None:
        problems = []
        for flag, value, allowed in (("--split-by", self.split_by, SPLIT_MODES),
                                     ("--encoding-errors", self.encoding_errors, ENCODING_ERRORS),
                                     ("--input-format", self.input_format, INPUT_FORMATS)):
            if value not in allowed:
                problems.append(f"{flag} must be one of {', '.join(allowed)} (got {value!r})")
        for flag, path in (("--text-field", self.text_field), ("--label-field", self.label_field),
                           ("--text-pair-field", self.text_pair_field)):
            if path is not None and (not isinstance(path, str) or "" in path.split(".")):
                problems.append(f"{flag} must be a field name or dotted path such as 'meta.body' (got {path!r})")
        if not self.text_column:
            problems.append("--text-column must not be empty")
        if isinstance(self.max_record_bytes, bool) or not isinstance(self.max_record_bytes, int) \
                or self.max_record_bytes < 1:
            problems.append(f"--max-record-bytes must be a positive number of bytes (got {self.max_record_bytes!r})")
        if problems:
            raise ConfigError(problems)


@dataclass
class RawDocument:
    """One document as read, before cleaning."""

    text: str
    location: str          # "path:line" (the line where the record starts); "path:row N" (1-based) for columnar
    label: str | None      # str() of a str/int/bool label; None when absent or null
    text_pair: str | None = None  # the second text, read with --text-pair-field; None otherwise
