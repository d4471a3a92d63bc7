"""Parquet and Arrow readers: columns (struct fields by dotted path) read in bounded row batches.

pyarrow is imported only when such an input is read.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any, BinaryIO, Callable, Iterator

from lmkit.data.sources.inputs import _display_name
from lmkit.data.sources.options import RawDocument, ReadOptions
from lmkit.data.sources.streams import _bad_record, _open_file, _Progress, _too_long
from lmkit.errors import UserError

_BATCH_ROWS = 1024


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
    pair_path = (None if options.text_pair_field is None
                 else _column_path(schema, options.text_pair_field, "--text-pair-field", name, _is_text_type))
    columns = list(dict.fromkeys(p[0] for p in (text_path, label_path, pair_path) if p))
    size = os.path.getsize(path) if path != "-" else 0
    row = 0
    for batch in _guard_arrow_errors(make_batches(columns), name, fmt):
        for start in range(0, batch.num_rows, _BATCH_ROWS):
            chunk = batch.slice(start, _BATCH_ROWS)
            texts = _column_values(chunk, text_path)
            labels = _column_values(chunk, label_path) if label_path else [None] * len(texts)
            pairs = _column_values(chunk, pair_path) if pair_path else None
            yield from _row_documents(texts, labels, pairs, row, name, options, counts)
            row += len(texts)
        progress.reach(int(size * fraction_done()))


def _row_documents(texts: list[Any], labels: list[Any], pairs: list[Any] | None, rows_before: int, name: str,
                   options: ReadOptions, counts: collections.Counter) -> Iterator[RawDocument]:
    """``pairs``: the --text-pair-field column's values, or None without one."""
    limit = options.max_record_bytes
    for row, (text, label, pair) in enumerate(zip(texts, labels, pairs or [""] * len(texts)),
                                              start=rows_before + 1):
        location = f"{name}:row {row}"
        counts["records"] += 1
        whole = "" if text is None or pair is None else text + pair  # the limit bounds the record, both texts
        if text is None:
            _bad_record(f"{location}: no text at --text-field '{options.text_field}' (found null)", options, counts)
        elif pair is None:
            _bad_record(f"{location}: no text at --text-pair-field '{options.text_pair_field}' (found null)",
                        options, counts)
        elif len(whole) > limit // 4 and len(whole.encode("utf-8", errors="surrogatepass")) > limit:
            _bad_record(_too_long(location, limit), options, counts)  # the same limit as every other format
        else:
            yield RawDocument(text, location, None if label is None else str(label), pair if pairs else None)


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
    """[column, struct field, ...] of a --text-field/--label-field/--text-pair-field, checked against the schema."""
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
