"""Plain-text readers: one document per line, per paragraph (blank-line separated) or per file."""

from __future__ import annotations

import collections
from typing import Iterator

from lmkit.data.sources.options import RawDocument, ReadOptions
from lmkit.data.sources.streams import (
    _TOO_LONG,
    _bad_record,
    _decode,
    _decoded_lines,
    _keep_encoding,
    _TextSource,
    _too_long,
)


def _read_txt(source: _TextSource, options: ReadOptions, counts: collections.Counter) -> Iterator[RawDocument]:
    readers = {"line": _read_txt_lines, "paragraph": _read_txt_paragraphs, "file": _read_txt_file}
    return readers[options.split_by](source, options, counts)


def _read_txt_lines(source: _TextSource, options: ReadOptions, counts: collections.Counter):
    for location, text, _invalid in _decoded_lines(source, options, counts):
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
