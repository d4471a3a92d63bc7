"""Reading documents from raw inputs: plain text, JSON Lines, JSON arrays, CSV/TSV, Parquet and
Arrow, optionally gzip/bzip2/xz/zstd-compressed, streamed with memory bounded by --max-record-bytes.

Cleaning happens later; this module finds the input files, decodes them, and turns bad input into
one ``UserError`` line naming the file and line (or skips and counts it with --skip-bad-records).
"""

from __future__ import annotations

import bz2
import collections
import contextlib
import csv
import glob
import gzip
import io
import json
import lzma
import os
import re
import sys
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

from lmkit.errors import ConfigError, UserError

SUPPORTED_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".ndjson", ".json", ".csv", ".tsv",
                      ".parquet", ".arrow", ".ipc", ".feather")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
INPUT_FORMATS = ("auto", "txt", "jsonl", "json", "csv", "tsv", "parquet", "arrow")
SPLIT_MODES = ("line", "paragraph", "file")
ENCODING_ERRORS = ("strict", "replace", "skip")

_FORMAT_OF_SUFFIX = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                     ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
                     ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}
# Parquet and Arrow compress internally and need random access, so they are never decompressed by suffix.
_COLUMNAR = ("parquet", "arrow")

_SNIFF_BYTES = 8192        # a NUL byte this early means a binary (or UTF-16) file, not UTF-8 text
_CHUNK_BYTES = 1 << 16     # read size; a line is assembled from chunks so memory stays bounded
_BATCH_ROWS = 1024
_BOM = b"\xef\xbb\xbf"
_NEWLINE = b"\n"
_LINE_END = re.compile(rb"\r\n?|\n")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")   # what errors="surrogateescape" makes of invalid UTF-8
_SKIP_HINT = "use --skip-bad-records to skip such records"
_MISSING = object()
_TOO_LONG = object()


@dataclass(frozen=True)
class ReadOptions:
    """How input files become documents; each field is the CLI flag of the same name."""

    split_by: str = "paragraph"          # txt only: "line", "paragraph" (blank-line separated) or "file"
    text_field: str = "text"             # dotted path into JSON records ("meta.body", "turns.0.text"), or a
    #                                      parquet/arrow column (dotted = struct field)
    text_column: str = "text"            # csv/tsv column holding the text
    label_field: str | None = None       # dotted path / column of a label; None = no labels
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
        for flag, path in (("--text-field", self.text_field), ("--label-field", self.label_field)):
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


# -- finding inputs ----------------------------------------------------------------------------------
def resolve_inputs(specs: list[str], *, input_format: str = "auto") -> list[str]:
    """Expand files, directories (recursive, sorted), glob patterns (sorted, ``**`` allowed) and "-"
    (stdin) into a de-duplicated list of inputs, keeping first occurrences.

    With an explicit ``input_format``, explicit files and glob matches of any suffix are accepted.
    """
    if not specs:
        raise UserError("no inputs given: name files, directories, glob patterns, or - for stdin")
    resolved, seen = [], set()
    for spec in specs:
        for path in _expand(spec, input_format):
            key = path if path == "-" else os.path.normcase(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                resolved.append(path)
    return resolved


def _expand(spec: str, input_format: str) -> list[str]:
    if spec == "-":
        return ["-"]
    if os.path.isdir(spec):
        return _expand_directory(spec)
    if os.path.exists(spec):
        if input_format == "auto" and not _is_supported(spec):
            raise UserError(f"{spec}: unsupported file type; {_supported_list()} (or pass --input-format)")
        return [spec]
    if glob.has_magic(spec):
        return _expand_glob(spec, input_format)
    raise UserError(f"{spec}: no such file or directory")


def _expand_directory(directory: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(directory, onerror=_raise_walk_error):
        # Hidden entries are tool metadata (.git, .cache, macOS "._x.txt" resource forks), not corpus.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and _is_supported(f)]
    if not found:
        raise UserError(f"{directory}: directory has no supported file; {_supported_list()}")
    return sorted(found)


def _raise_walk_error(exc: OSError) -> None:
    raise UserError(f"{exc.filename}: cannot list directory ({exc.strerror})") from exc


def _expand_glob(pattern: str, input_format: str) -> list[str]:
    matches = [m for m in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(m)]
    if not matches:
        raise UserError(f"{pattern}: no file matches this pattern")
    found = [m for m in matches if input_format != "auto" or _is_supported(m)]
    if not found:
        raise UserError(f"{pattern}: pattern matches no supported file; {_supported_list()}")
    return found


def _split_name(path: str) -> tuple[str, str]:
    """(format suffix, compression suffix or "") of a file name, lower-cased."""
    name = os.path.basename(path).lower()
    compression = next((s for s in COMPRESSION_SUFFIXES if name.endswith(s)), "")
    return os.path.splitext(name[: len(name) - len(compression)])[1], compression


def _is_supported(path: str) -> bool:
    suffix, compression = _split_name(path)
    fmt = _FORMAT_OF_SUFFIX.get(suffix)
    return fmt is not None and not (compression and fmt in _COLUMNAR)


def _supported_list() -> str:
    return (f"supported: {', '.join(SUPPORTED_SUFFIXES)}, the text ones optionally compressed with "
            f"{', '.join(COMPRESSION_SUFFIXES)}")


# -- reading one input ---------------------------------------------------------------------------------
def iter_documents(path: str, options: ReadOptions, counts: collections.Counter, *,
                   stdin: BinaryIO | None = None) -> Iterator[RawDocument]:
    """Stream the documents of one input (a path, or "-" for ``stdin``/``sys.stdin.buffer``).

    Updates ``counts``: "records" (read, bad ones included), "encoding_replaced", "encoding_skipped",
    "bad_records" (skipped with --skip-bad-records) and "input_bytes" (bytes consumed from the file
    as stored, compressed or not; updated per chunk read and completed at the end).
    """
    fmt = _input_format(path, options)
    if options.label_field is not None and fmt == "txt":
        raise UserError(f"{_display_name(path)}: --label-field needs jsonl, json, csv, tsv, parquet or arrow "
                        "input; plain text has no labels")
    progress = _Progress(counts)
    if fmt in _COLUMNAR:
        yield from _read_columnar(path, fmt, options, counts, progress, stdin)
    else:
        with contextlib.ExitStack() as stack:
            read = _open_byte_stream(path, stack, progress, stdin)
            source = _TextSource(read, _display_name(path))
            yield from _TEXT_READERS[fmt](source, options, counts)
    if path != "-":
        # Parquet/Arrow are read by row, and an oversized whole-file document stops early: settle at the size.
        progress.reach(os.path.getsize(path))


def _display_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _input_format(path: str, options: ReadOptions) -> str:
    if path == "-":
        fmt = "txt" if options.input_format == "auto" else options.input_format
        if fmt == "parquet":
            raise UserError("<stdin>: parquet cannot be read from stdin (it needs random access); pass a file path")
        return fmt
    suffix, compression = _split_name(path)
    fmt = options.input_format if options.input_format != "auto" else _FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        raise UserError(f"{path}: unsupported file type; {_supported_list()} (or pass --input-format)")
    if compression and fmt in _COLUMNAR:
        raise UserError(f"{path}: {fmt} input cannot be {compression}-compressed (it compresses internally); "
                        "decompress it first")
    return fmt


class _Progress:
    """This input's share of counts["input_bytes"], advanced as bytes are consumed."""

    def __init__(self, counts: collections.Counter):
        self._counts, self.done = counts, 0

    def add(self, n: int) -> None:
        self.done += n
        self._counts["input_bytes"] += n

    def reach(self, total: int) -> None:
        if total > self.done:
            self.add(total - self.done)


class _CountingFile(io.RawIOBase):
    """The stored (possibly compressed) byte stream, reporting each read to the progress count."""

    def __init__(self, raw: BinaryIO, progress: _Progress):
        super().__init__()
        self._raw, self._progress = raw, progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # read(), not readinto(): stdin may be a wrapper (hashing its bytes) that only implements read().
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self._progress.add(len(data))
        return len(data)


def _open_file(path: str) -> BinaryIO:
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path}: is a directory, not a file") from exc
    except PermissionError as exc:
        raise UserError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot open ({exc.strerror})") from exc


def _open_byte_stream(path: str, stack: contextlib.ExitStack, progress: _Progress,
                      stdin: BinaryIO | None) -> Callable[[int], bytes]:
    """A ``read(n)`` over the decompressed bytes of an input; decompression errors name the file."""
    if path == "-":
        return _CountingFile(stdin if stdin is not None else sys.stdin.buffer, progress).read
    counted = _CountingFile(stack.enter_context(_open_file(path)), progress)
    compression = _split_name(path)[1]
    if not compression:
        return counted.read
    stream, errors, kind = _decompressor(compression, counted, path)
    stack.enter_context(stream)

    def read(n: int) -> bytes:
        try:
            return stream.read(n)
        except errors as exc:
            raise UserError(f"{path}: corrupt or not {kind} data ({exc})") from exc
    return read


def _decompressor(compression: str, raw: BinaryIO, path: str) -> tuple[Any, tuple, str]:
    """(stream, the exceptions that mean corrupt data, format name) for a compression suffix."""
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), (OSError, EOFError, zlib.error), "gzip"
    if compression == ".bz2":
        return bz2.BZ2File(raw), (OSError, EOFError), "bzip2"
    if compression == ".xz":
        return lzma.LZMAFile(raw), (lzma.LZMAError, EOFError), "xz"
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: reading .zst files needs the zstandard package: pip install 'lmkit[zstd]'") \
            from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return reader, (zstandard.ZstdError,), "zstd"


class _TextSource:
    """Lines of a byte stream, ending in \\n, \\r\\n or \\r, assembled from bounded chunks.

    Checks the first bytes for NUL (binary input) and drops a UTF-8 BOM. A line longer than the
    caller's limit is reported as ``_TOO_LONG`` without being held; its rest is discarded on the next call.
    """

    def __init__(self, read: Callable[[int], bytes], name: str):
        self.name, self._read = name, read
        self._buffer = bytearray()
        self._scan = 0             # no line end before this index of the buffer
        self._eof = False
        self._discard_pending = False
        self.line_no = 0           # 1-based number of the line last returned
        self.last_terminated = False
        self._check_start()

    def _fill(self) -> bool:
        if not self._eof:
            chunk = self._read(_CHUNK_BYTES)
            if chunk:
                self._buffer += chunk
                return True
            self._eof = True
        return False

    def _check_start(self) -> None:
        while len(self._buffer) < _SNIFF_BYTES and self._fill():
            pass
        nul = self._buffer.find(b"\0", 0, _SNIFF_BYTES)
        if nul >= 0:
            raise UserError(f"{self.name} looks binary (NUL byte at offset {nul}); text input must be UTF-8")
        if self._buffer.startswith(_BOM):
            del self._buffer[: len(_BOM)]

    def _line_end(self, start: int) -> tuple[re.Match | None, bool]:
        """The next line end at or after ``start``, and whether it is certain: a \\r that ends the
        buffer may be the first half of a \\r\\n split across chunks."""
        match = _LINE_END.search(self._buffer, start)
        certain = match is not None and (self._eof or match.end() < len(self._buffer) or match.group() == b"\r\n")
        return match, certain

    def next_line(self, limit: int) -> bytes | object | None:
        """The next line without its terminator, ``_TOO_LONG`` if over ``limit`` bytes, None at the end."""
        if self._discard_pending:
            self._discard_rest_of_line()
        while True:
            match, certain = self._line_end(self._scan)
            if certain:
                return self._take(match.start(), match.end(), limit)
            content = match.start() if match else len(self._buffer)
            if content > limit:
                self.line_no += 1
                self._discard_pending = True
                return _TOO_LONG
            self._scan = content
            if not self._fill() and match is None:
                if not self._buffer:
                    return None
                return self._take(len(self._buffer), len(self._buffer), limit)

    def _take(self, end: int, after: int, limit: int) -> bytes | object:
        line = bytes(self._buffer[:end])
        self.last_terminated = after > end
        del self._buffer[:after]
        self._scan = 0
        self.line_no += 1
        return line if len(line) <= limit else _TOO_LONG

    def _discard_rest_of_line(self) -> None:
        self._discard_pending = False
        while True:
            match, certain = self._line_end(0)
            if certain:
                del self._buffer[: match.end()]
                break
            del self._buffer[: match.start() if match else len(self._buffer)]
            if not self._fill() and match is None:
                break
        self._scan = 0

    def read_all(self, limit: int) -> bytes | None:
        """The rest of the input, or None if it is longer than ``limit`` bytes."""
        while len(self._buffer) <= limit and self._fill():
            pass
        return bytes(self._buffer) if len(self._buffer) <= limit else None

    def drain(self) -> None:
        """Consume the rest of the input (so byte counts and stdin hashes cover all of it)."""
        self._buffer.clear()
        while self._fill():
            self._buffer.clear()


# -- decoding and bad records -------------------------------------------------------------------------
def _decode(raw: bytes, location: str, encoding_errors: str) -> tuple[str, bool]:
    """The text of one line and whether it held invalid UTF-8 (then replaced by U+FFFD)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as exc:
        if encoding_errors == "strict":
            raise _invalid_utf8(raw, exc.start, location) from None
        return raw.decode("utf-8", errors="replace"), True


def _invalid_utf8(line: bytes, start: int, location: str) -> UserError:
    column = len(line[:start].decode("utf-8")) + 1  # in characters, as editors count; the prefix is valid
    return UserError(f"{location}: invalid UTF-8 (byte 0x{line[start]:02x} at column {column}); "
                     "use --encoding-errors replace|skip")


def _keep_encoding(invalid: bool, options: ReadOptions, counts: collections.Counter) -> bool:
    """Whether a record is kept given its UTF-8 validity; counts replaced and skipped records."""
    if not invalid:
        return True
    if options.encoding_errors == "skip":
        counts["encoding_skipped"] += 1
        return False
    counts["encoding_replaced"] += 1
    return True


def _bad_record(message: str, options: ReadOptions, counts: collections.Counter) -> None:
    """Count a bad record under --skip-bad-records, else stop on it."""
    if not options.skip_bad_records:
        raise UserError(f"{message}; {_SKIP_HINT}")
    counts["bad_records"] += 1


def _too_long(location: str, limit: int) -> str:
    return f"{location}: record longer than {limit} bytes (--max-record-bytes)"


# -- plain text -----------------------------------------------------------------------------------------
def _read_txt(source: _TextSource, options: ReadOptions, counts: collections.Counter) -> Iterator[RawDocument]:
    readers = {"line": _read_txt_lines, "paragraph": _read_txt_paragraphs, "file": _read_txt_file}
    return readers[options.split_by](source, options, counts)


def _read_txt_lines(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    limit = options.max_record_bytes
    while (raw := source.next_line(limit)) is not None:
        location = f"{source.name}:{source.line_no}"
        if raw is _TOO_LONG:
            counts["records"] += 1
            _bad_record(_too_long(location, limit), options, counts)
            continue
        text, invalid = _decode(raw, location, options.encoding_errors)
        if not text.strip():
            continue
        counts["records"] += 1
        if _keep_encoding(invalid, options, counts):
            yield RawDocument(text, location, None)


def _read_txt_paragraphs(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    """Runs of non-blank lines joined with "\\n", located at their first line."""
    limit = options.max_record_bytes
    lines: list[str] = []
    start, size, invalid, oversized = "", 0, False, False
    while True:
        raw = source.next_line(limit)
        location = f"{source.name}:{source.line_no}"
        if raw is None or raw is _TOO_LONG:
            blank = raw is None
        elif oversized:  # the rest of a skipped paragraph: only its end matters
            blank = not raw.decode("utf-8", errors="replace").strip()
        else:
            text, line_invalid = _decode(raw, location, options.encoding_errors)
            blank = not text.strip()
        if blank:
            if start and not oversized:
                counts["records"] += 1
                if _keep_encoding(invalid, options, counts):
                    yield RawDocument("\n".join(lines), start, None)
            if raw is None:
                return
            lines, start, size, invalid, oversized = [], "", 0, False, False
            continue
        start = start or location
        if oversized:
            continue
        size += (len(raw) + (1 if lines else 0)) if raw is not _TOO_LONG else limit + 1
        if size > limit:
            counts["records"] += 1
            _bad_record(_too_long(start, limit), options, counts)
            lines, oversized = [], True
            continue
        lines.append(text)
        invalid = invalid or line_invalid


def _read_txt_file(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    """The whole input as one document, its line ends normalized to "\\n"."""
    limit = options.max_record_bytes
    location = f"{source.name}:1"
    counts["records"] += 1
    lines: list[str] = []
    size, invalid = 0, False
    while (raw := source.next_line(max(limit - size, 0))) is not None:
        size += (len(raw) + (1 if lines else 0)) if raw is not _TOO_LONG else limit + 1
        if size > limit:
            _bad_record(_too_long(location, limit), options, counts)
            source.drain()
            return
        text, line_invalid = _decode(raw, f"{source.name}:{source.line_no}", options.encoding_errors)
        lines.append(text)
        invalid = invalid or line_invalid
    if _keep_encoding(invalid, options, counts):
        yield RawDocument("\n".join(lines) + ("\n" if source.last_terminated else ""), location, None)


# -- JSON -----------------------------------------------------------------------------------------------
def _lookup(value: Any, dotted: str) -> Any:
    """The value at a dotted path (dict keys, or integer indices into lists), or _MISSING."""
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "not found"
    kinds = ((type(None), "null"), (bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
             (list, "a list"), (dict, "an object"))
    return "found " + next(name for kind, name in kinds if isinstance(value, kind))


def _document_from_json(record: Any, location: str, options: ReadOptions,
                        counts: collections.Counter, allow_string: bool = False) -> RawDocument | None:
    """The document of one parsed JSON record, or None (counted) if it is a skipped bad record."""
    if allow_string and isinstance(record, str):
        return RawDocument(record, location, None)
    if not isinstance(record, dict):
        _bad_record(f"{location}: record is not a JSON object ({_describe(record)})", options, counts)
        return None
    text = _lookup(record, options.text_field)
    if not isinstance(text, str):
        _bad_record(f"{location}: no text at --text-field '{options.text_field}' ({_describe(text)})",
                    options, counts)
        return None
    if options.label_field is None:
        return RawDocument(text, location, None)
    label = _lookup(record, options.label_field)
    if label is _MISSING or label is None:
        return RawDocument(text, location, None)
    if not isinstance(label, (str, int)):  # bool is an int
        _bad_record(f"{location}: label at --label-field '{options.label_field}' must be a string, integer or "
                    f"boolean ({_describe(label)})", options, counts)
        return None
    return RawDocument(text, location, str(label))


def _read_jsonl(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    limit = options.max_record_bytes
    while (raw := source.next_line(limit)) is not None:
        location = f"{source.name}:{source.line_no}"
        if raw is _TOO_LONG:
            counts["records"] += 1
            _bad_record(_too_long(location, limit), options, counts)
            continue
        line, invalid = _decode(raw, location, options.encoding_errors)
        if not line.strip():
            continue
        counts["records"] += 1
        if not _keep_encoding(invalid, options, counts):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad_record(f"{location}: invalid JSON ({exc.msg})", options, counts)
            continue
        document = _document_from_json(record, location, options, counts)
        if document is not None:
            yield document


def _read_json_array(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    """A top-level JSON array of objects or strings, loaded whole (up to --max-record-bytes)."""
    limit = options.max_record_bytes
    data = source.read_all(limit)
    if data is None:
        raise UserError(f"{source.name}: JSON file larger than {limit} bytes (--max-record-bytes); "
                        "convert it to JSON Lines (.jsonl) to stream it")
    text = _decode_json_file(data, source.name, options.encoding_errors)
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # only whitespace: JSON strings cannot hold raw CRs
    pos = _JSON_SPACE.match(text).end()
    if not text.startswith("[", pos):
        raise UserError(f"{source.name}: a .json input must be a JSON array of objects or strings; "
                        "use .jsonl for one JSON object per line")
    decoder, line, counted_to = json.JSONDecoder(), 1, 0
    pos = _JSON_SPACE.match(text, pos + 1).end()
    while not text.startswith("]", pos):
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        location = f"{source.name}:{line}"
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:  # no way to resynchronize inside an array: always an error
            raise UserError(f"{source.name}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        counts["records"] += 1
        document = _document_from_json(value, location, options, counts, allow_string=True)
        if document is not None and _keep_json_encoding(document, options, counts):
            yield document
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            pos = _JSON_SPACE.match(text, pos + 1).end()
        elif not text.startswith("]", pos):
            raise UserError(f"{source.name}:{_line_of(text, pos)}: invalid JSON (Expecting ',' delimiter or ']')")
    end = _JSON_SPACE.match(text, pos + 1).end()
    if end != len(text):
        raise UserError(f"{source.name}:{_line_of(text, end)}: invalid JSON (extra data after the array)")


def _line_of(text: str, pos: int) -> int:
    return 1 + text.count("\n", 0, pos)


def _decode_json_file(data: bytes, name: str, encoding_errors: str) -> str:
    """Strict decoding names the line; otherwise invalid bytes are kept as escapes, judged per record."""
    if encoding_errors != "strict":
        return data.decode("utf-8", errors="surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        location = f"{name}:{1 + data.count(_NEWLINE, 0, exc.start)}"
        raise _invalid_utf8(data[line_start:], exc.start - line_start, location) from None


def _keep_json_encoding(document: RawDocument, options: ReadOptions, counts: collections.Counter) -> bool:
    invalid = bool(_ESCAPED_BYTE.search(document.text) or (document.label and _ESCAPED_BYTE.search(document.label)))
    if invalid:
        document.text = _ESCAPED_BYTE.sub("\ufffd", document.text)
        document.label = document.label and _ESCAPED_BYTE.sub("\ufffd", document.label)
    return _keep_encoding(invalid, options, counts)


# -- CSV / TSV ------------------------------------------------------------------------------------------
class _CsvLines:
    """Decoded lines fed to ``csv.reader``, tracking the current record's first line, size and validity.

    An oversized single-line record can be skipped; inside a quoted multi-line field there is no way to
    find the record's end, so that is always an error.
    """

    def __init__(self, source: _TextSource, options: ReadOptions, counts: collections.Counter):
        self._source, self._options, self._counts = source, options, counts
        self._start, self._size, self._invalid, self._lines = 0, 0, False, 0

    def take_record(self) -> tuple[int, bool]:
        """(first line, held invalid UTF-8) of the record just parsed; starts the next one."""
        record = (self._start, self._invalid)
        self._start, self._size, self._invalid, self._lines = 0, 0, False, 0
        return record

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        limit = self._options.max_record_bytes
        while (raw := self._source.next_line(limit)) is not None:
            location = f"{self._source.name}:{self._source.line_no}"
            if raw is _TOO_LONG and self._lines == 0:
                self._counts["records"] += 1
                _bad_record(_too_long(location, limit), self._options, self._counts)
                continue
            self._start = self._start or self._source.line_no
            self._size += (len(raw) + 1) if raw is not _TOO_LONG else limit + 1
            if self._size > limit:
                raise UserError(f"{_too_long(f'{self._source.name}:{self._start}', limit)}; a quoted field "
                                "spanning lines cannot be skipped")
            text, invalid = _decode(raw, location, self._options.encoding_errors)
            self._invalid = self._invalid or invalid
            self._lines += 1
            return text + "\n"
        raise StopIteration


def _csv_rows(lines: _CsvLines, delimiter: str, name: str) -> Iterator[list[str]]:
    reader = csv.reader(lines, delimiter=delimiter)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UserError(f"{name}:{reader.line_num}: malformed CSV ({exc})") from None
        yield row


def _column_index(header: list[str], column: str, flag: str, name: str) -> int:
    if column not in header:
        raise UserError(f"{name}: no column '{column}' ({flag}); columns: {', '.join(header)}")
    return header.index(column)


def _read_csv(source: _TextSource, options: ReadOptions, counts: collections.Counter, delimiter: str = ","):
    # Never lower a process-wide limit other code may rely on; our own line limit bounds memory anyway.
    csv.field_size_limit(max(csv.field_size_limit(), options.max_record_bytes))
    lines = _CsvLines(source, options, counts)
    rows = _csv_rows(lines, delimiter, source.name)
    header = next(rows, None)
    if header is None:
        raise UserError(f"{source.name}: empty file; CSV/TSV input needs a header row naming its columns")
    lines.take_record()
    text_index = _column_index(header, options.text_column, "--text-column", source.name)
    label_index = (None if options.label_field is None
                   else _column_index(header, options.label_field, "--label-field", source.name))
    for row in rows:
        start, invalid = lines.take_record()
        if not row:  # a blank line
            continue
        counts["records"] += 1
        location = f"{source.name}:{start}"
        if not _keep_encoding(invalid, options, counts):
            continue
        if text_index >= len(row):
            _bad_record(f"{location}: no text at --text-column '{options.text_column}' (the row has "
                        f"{len(row)} fields, the header {len(header)})", options, counts)
            continue
        # CSV has no null: an empty or absent label cell is a missing label.
        label = row[label_index] if label_index is not None and label_index < len(row) else None
        yield RawDocument(row[text_index], location, label or None)


def _read_tsv(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    return _read_csv(source, options, counts, delimiter="\t")


_TEXT_READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "json": _read_json_array, "csv": _read_csv,
                 "tsv": _read_tsv}


# -- Parquet / Arrow ------------------------------------------------------------------------------------
def _read_columnar(path: str, fmt: str, options: ReadOptions, counts: collections.Counter,
                   progress: _Progress, stdin: BinaryIO | None) -> Iterator[RawDocument]:
    import pyarrow as pa

    name = _display_name(path)
    if path != "-":
        _open_file(path).close()  # the same messages as text input for missing/unreadable paths
    opener = _open_parquet if fmt == "parquet" else _open_arrow
    try:
        schema, make_batches, fraction_done = opener(path, stdin)
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{name}: not a readable {fmt} file ({exc})") from exc
    text_path = _column_path(schema, options.text_field, "--text-field", name, _is_text_type)
    label_path = (None if options.label_field is None
                  else _column_path(schema, options.label_field, "--label-field", name, _is_label_type))
    columns = list(dict.fromkeys(p[0] for p in (text_path, label_path) if p))
    size = os.path.getsize(path) if path != "-" else 0
    row = 0
    for batch in _guard_arrow_errors(make_batches(columns), name, fmt):
        for start in range(0, batch.num_rows, _BATCH_ROWS):
            chunk = batch.slice(start, _BATCH_ROWS)
            texts = _column_values(chunk, text_path)
            labels = _column_values(chunk, label_path) if label_path else [None] * len(texts)
            yield from _row_documents(texts, labels, row, name, options, counts)
            row += len(texts)
        progress.reach(int(size * fraction_done()))


def _row_documents(texts: list[Any], labels: list[Any], rows_before: int, name: str, options: ReadOptions,
                   counts: collections.Counter) -> Iterator[RawDocument]:
    limit = options.max_record_bytes
    for row, (text, label) in enumerate(zip(texts, labels), start=rows_before + 1):
        location = f"{name}:row {row}"
        counts["records"] += 1
        if text is None:
            _bad_record(f"{location}: no text at --text-field '{options.text_field}' (found null)", options, counts)
        elif len(text) > limit // 4 and len(text.encode("utf-8", errors="surrogatepass")) > limit:
            _bad_record(_too_long(location, limit), options, counts)  # the same limit as every other format
        else:
            yield RawDocument(text, location, None if label is None else str(label))


def _open_parquet(path: str, stdin: BinaryIO | None):
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    total, rows_read = max(parquet.metadata.num_rows, 1), [0]

    def batches(columns: list[str]) -> Iterator[Any]:
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            rows_read[0] += batch.num_rows
            yield batch
    return parquet.schema_arrow, batches, lambda: rows_read[0] / total


def _open_arrow(path: str, stdin: BinaryIO | None):
    import pyarrow as pa

    # Arrow batches are memory-mapped (zero copy), so there is no column projection to gain.
    if path == "-":
        stream = pa.ipc.open_stream(stdin if stdin is not None else sys.stdin.buffer)
        return stream.schema, lambda columns: stream, lambda: 0.0
    source = pa.memory_map(path)
    try:
        reader = pa.ipc.open_file(source)
    except pa.ArrowInvalid:  # not the file format: try the streaming format
        source.seek(0)
        stream = pa.ipc.open_stream(source)
        return stream.schema, lambda columns: stream, lambda: source.tell() / max(source.size(), 1)
    done = [0]

    def batches(columns: list[str]) -> Iterator[Any]:
        for index in range(reader.num_record_batches):
            done[0] = index + 1
            yield reader.get_batch(index)
    return reader.schema, batches, lambda: done[0] / max(reader.num_record_batches, 1)


def _guard_arrow_errors(batches: Any, name: str, fmt: str) -> Iterator[Any]:
    import pyarrow as pa

    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{name}: corrupt {fmt} data ({exc})") from exc
        yield batch


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    string_view = getattr(pa.types, "is_string_view", lambda t: False)
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or string_view(arrow_type)


def _is_label_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    value_type = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    return _is_text_type(value_type) or pa.types.is_integer(value_type) or pa.types.is_boolean(value_type)


def _column_path(schema: Any, dotted: str, flag: str, name: str, type_ok: Callable[[Any], bool]) -> list[str]:
    """[column, struct field, ...] of a --text-field/--label-field, checked against the schema."""
    import pyarrow as pa

    parts = [dotted] if dotted in schema.names else dotted.split(".")
    if parts[0] not in schema.names:
        raise UserError(f"{name}: no column '{parts[0]}' ({flag} '{dotted}'); columns: {', '.join(schema.names)}")
    arrow_type = schema.field(parts[0]).type
    for depth, part in enumerate(parts[1:], start=1):
        index = arrow_type.get_field_index(part) if pa.types.is_struct(arrow_type) else -1
        if index < 0:
            raise UserError(f"{name}: column '{'.'.join(parts[:depth])}' has no struct field '{part}' "
                            f"({flag} '{dotted}')")
        arrow_type = arrow_type[index].type
    if not type_ok(arrow_type):
        raise UserError(f"{name}: column '{dotted}' ({flag}) has type {arrow_type}, which is not usable there")
    return parts


def _column_values(batch: Any, parts: list[str]) -> list[Any]:
    values = batch.column(parts[0]).to_pylist()
    for part in parts[1:]:  # struct fields come out as dicts; a null struct is None
        values = [None if value is None else value[part] for value in values]
    return values
