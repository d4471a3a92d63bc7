"""One input's documents: its format decides between the text, record and columnar readers."""

from __future__ import annotations

import collections
import contextlib
import os
from typing import BinaryIO, Iterator

from lmkit.data.sources.columnar import _read_columnar
from lmkit.data.sources.inputs import _COLUMNAR, _display_name, _input_format
from lmkit.data.sources.options import RawDocument, ReadOptions
from lmkit.data.sources.records import _read_csv, _read_json_array, _read_jsonl, _read_tsv
from lmkit.data.sources.streams import _open_byte_stream, _Progress, _TextSource
from lmkit.data.sources.text import _read_txt
from lmkit.errors import UserError

_TEXT_READERS = {"txt": _read_txt, "jsonl": _read_jsonl, "json": _read_json_array, "csv": _read_csv,
                 "tsv": _read_tsv}


def iter_documents(path: str, options: ReadOptions, counts: collections.Counter, *,
                   stdin: BinaryIO | None = None) -> Iterator[RawDocument]:
    """Stream the documents of one input (a path, or "-" for ``stdin``/``sys.stdin.buffer``).

    Updates ``counts``: "records" (read, bad ones included), "encoding_replaced", "encoding_skipped",
    "bad_records" (skipped with --skip-bad-records) and "input_bytes" (bytes consumed from the file
    as stored, compressed or not; updated per chunk read and completed at the end).
    """
    fmt = _input_format(path, options)
    for flag, field, what in (("--label-field", options.label_field, "labels"),
                              ("--text-pair-field", options.text_pair_field, "second texts")):
        if field is not None and fmt == "txt":
            raise UserError(f"{_display_name(path)}: {flag} needs jsonl, json, csv, tsv, parquet or arrow input; "
                            f"plain text has no {what}")
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
