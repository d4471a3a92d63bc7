"""Record readers: JSON Lines, JSON arrays and CSV/TSV, with dotted-path lookup of text and label fields."""

from __future__ import annotations

import collections
import csv
import json
import re
from typing import Any, Iterator

from lmkit.data.sources.options import RawDocument, ReadOptions
from lmkit.data.sources.streams import (
    _TOO_LONG,
    _bad_record,
    _decode,
    _decoded_lines,
    _invalid_utf8,
    _keep_encoding,
    _TextSource,
    _too_long,
)
from lmkit.errors import UserError

_NEWLINE = b"\n"
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
# A lone surrogate is invalid UTF-8 in disguise: a JSON escape ("\ud800") or, with errors="surrogateescape",
# an undecodable byte (U+DC80-U+DCFF). Either would crash UTF-8 encoding later on.
_SURROGATE = re.compile("[\ud800-\udfff]")
_TOO_DEEP = "nested too deeply"  # the JSON decoder recurses per level and raises RecursionError
# The JSON decoder parses integers with int(), which raises ValueError beyond sys.get_int_max_str_digits().
_TOO_MANY_DIGITS = "a number with too many digits"
_MISSING = object()


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
    if allow_string and isinstance(record, str) and options.text_pair_field is None:
        return RawDocument(record, location, None)
    if not isinstance(record, dict):
        _bad_record(f"{location}: record is not a JSON object ({_describe(record)})", options, counts)
        return None
    texts = []
    for flag, field in (("--text-field", options.text_field), ("--text-pair-field", options.text_pair_field)):
        if field is None:
            texts.append(None)
            continue
        text = _lookup(record, field)
        if not isinstance(text, str):
            _bad_record(f"{location}: no text at {flag} '{field}' ({_describe(text)})", options, counts)
            return None
        texts.append(text)
    text, pair = texts
    if options.label_field is None:
        return RawDocument(text, location, None, pair)
    label = _lookup(record, options.label_field)
    if label is _MISSING or label is None:
        return RawDocument(text, location, None, pair)
    if not isinstance(label, (str, int)):  # bool is an int
        _bad_record(f"{location}: label at --label-field '{options.label_field}' must be a string, integer or "
                    f"boolean ({_describe(label)})", options, counts)
        return None
    return RawDocument(text, location, str(label), pair)


def _read_jsonl(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    for location, line, invalid in _decoded_lines(source, options, counts):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            _bad_record(f"{location}: invalid JSON ({exc.msg})", options, counts)
            continue
        except RecursionError:
            _bad_record(f"{location}: invalid JSON ({_TOO_DEEP})", options, counts)
            continue
        except ValueError:
            _bad_record(f"{location}: invalid JSON ({_TOO_MANY_DIGITS})", options, counts)
            continue
        document = _document_from_json(record, location, options, counts)
        # Invalid bytes were already replaced and counted (or skipped) with the line.
        if document is not None and _keep_json_encoding(document, options, counts, counted=invalid):
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
        except RecursionError:
            raise UserError(f"{location}: invalid JSON ({_TOO_DEEP})") from None
        except ValueError:
            raise UserError(f"{location}: invalid JSON ({_TOO_MANY_DIGITS})") from None
        counts["records"] += 1
        document = _document_from_json(value, location, options, counts, allow_string=True)
        if document is not None and _keep_json_encoding(document, options, counts):
            yield document
        pos = _JSON_SPACE.match(text, pos).end()
        if text.startswith(",", pos):
            comma, pos = pos, _JSON_SPACE.match(text, pos + 1).end()
            if text.startswith("]", pos):  # json.loads refuses "[1,]" too
                raise UserError(f"{source.name}:{_line_of(text, comma)}: invalid JSON (trailing comma before ']')")
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


def _lone_surrogate(text: str) -> str | None:
    if text.isascii():  # nearly every record: no regex scan
        return None
    match = _SURROGATE.search(text)
    return match.group() if match else None


def _keep_json_encoding(document: RawDocument, options: ReadOptions, counts: collections.Counter,
                        counted: bool = False) -> bool:
    """Whether a JSON record is kept given lone surrogates in its text, pair text or label, which are invalid
    UTF-8 under --encoding-errors like undecodable bytes; ``counted``: the record was already counted as replaced."""
    where, surrogate = "text", _lone_surrogate(document.text)
    for name in ("text_pair", "label"):
        if surrogate is None and getattr(document, name) is not None:
            where, surrogate = name.replace("_", " "), _lone_surrogate(getattr(document, name))
    if surrogate is None:
        return True
    if options.encoding_errors == "strict":
        raise UserError(f"{document.location}: invalid UTF-8 (lone surrogate \\u{ord(surrogate):04x} in the "
                        f"{where}); use --encoding-errors replace|skip")
    document.text = _SURROGATE.sub("\ufffd", document.text)
    document.text_pair = None if document.text_pair is None else _SURROGATE.sub("\ufffd", document.text_pair)
    document.label = None if document.label is None else _SURROGATE.sub("\ufffd", document.label)
    return counted or _keep_encoding(True, options, counts)


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
        # repr: a header cell may hold a quoted newline, and the error stays one line
        raise UserError(f"{name}: no column '{column}' ({flag}); columns: "
                        f"{', '.join(cell if cell.isprintable() else repr(cell) for cell in header)}")
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
    pair_index = (None if options.text_pair_field is None
                  else _column_index(header, options.text_pair_field, "--text-pair-field", source.name))
    for row in rows:
        start, invalid = lines.take_record()
        if not row:  # a blank line
            continue
        counts["records"] += 1
        location = f"{source.name}:{start}"
        if not _keep_encoding(invalid, options, counts):
            continue
        short = [(flag, name) for flag, name, index in (("--text-column", options.text_column, text_index),
                                                         ("--text-pair-field", options.text_pair_field, pair_index))
                 if index is not None and index >= len(row)]
        if short:
            _bad_record(f"{location}: no text at {short[0][0]} '{short[0][1]}' (the row has {len(row)} fields, "
                        f"the header {len(header)})", options, counts)
            continue
        # CSV has no null: an empty or absent label cell is a missing label.
        label = row[label_index] if label_index is not None and label_index < len(row) else None
        yield RawDocument(row[text_index], location, label or None, None if pair_index is None else row[pair_index])


def _read_tsv(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    return _read_csv(source, options, counts, delimiter="\t")
