"""Tests for lmkit.data.sources: every format and compression read from real files, and every bad
input checked for its one-line message naming the file (and line)."""

from __future__ import annotations

import bz2
import collections
import gzip
import io
import json
import lzma
import os
import re
import sys
import tempfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.data.sources import RawDocument, ReadOptions, iter_documents, resolve_inputs, streams
from lmkit.errors import ConfigError, UserError


def read(path, stdin=None, **options):
    counts = collections.Counter()
    docs = list(iter_documents(str(path), ReadOptions(**options), counts, stdin=stdin))
    return docs, counts


def texts(path, **options):
    return [d.text for d in read(path, **options)[0]]


def write(path, data: bytes | str):
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def error_of(path, stdin=None, **options) -> str:
    with pytest.raises(UserError) as info:
        read(path, stdin=stdin, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- plain text ---------------------------------------------------------------------------------------
TXT = "first para\nstill first\n\n  \t\nsecond para\n\n\nthird\n"


def test_txt_split_by_paragraph_joins_lines_and_locates_first_line(tmp_path):
    docs, counts = read(write(tmp_path / "a.txt", TXT))
    assert docs == [RawDocument("first para\nstill first", f"{tmp_path}/a.txt:1", None),
                    RawDocument("second para", f"{tmp_path}/a.txt:5", None),
                    RawDocument("third", f"{tmp_path}/a.txt:8", None)]
    assert counts["records"] == 3


def test_txt_split_by_line_skips_blank_lines(tmp_path):
    docs, _ = read(write(tmp_path / "a.text", TXT), split_by="line")
    assert [(d.text, d.location.rsplit(":", 1)[1]) for d in docs] == [
        ("first para", "1"), ("still first", "2"), ("second para", "5"), ("third", "8")]


def test_txt_split_by_file_is_one_document_as_read(tmp_path):
    docs, counts = read(write(tmp_path / "a.md", "# Title\r\n\r\nbody\r\n"), split_by="file")
    assert docs == [RawDocument("# Title\n\nbody\n", f"{tmp_path}/a.md:1", None)]
    assert counts["records"] == 1


def test_crlf_and_cr_line_ends_become_newlines_and_bom_is_dropped(tmp_path):
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\n\r\nfour")
    assert texts(path, split_by="line") == ["one", "two", "three", "four"]
    assert texts(path) == ["one\ntwo\nthree", "four"]


@given(st.lists(st.sampled_from(["a", "bc", "", " ", "\r", "\n", "\r\n", "é"]), max_size=60))
@settings(max_examples=150, deadline=None)
def test_line_ends_split_across_read_chunks(pieces):
    data = "".join(pieces)
    expected = [(line, f"<stdin>:{number}")
                for number, line in enumerate(re.split(r"\r\n|\r|\n", data), start=1) if line.strip()]
    saved = streams._CHUNK_BYTES, streams._SNIFF_BYTES
    streams._CHUNK_BYTES, streams._SNIFF_BYTES = 3, 2  # tiny chunks put a \r\n across every boundary
    try:
        docs, _ = read("-", stdin=io.BytesIO(data.encode()), split_by="line")
    finally:
        streams._CHUNK_BYTES, streams._SNIFF_BYTES = saved
    assert [(d.text, d.location) for d in docs] == expected


def test_label_field_with_txt_input_is_refused(tmp_path):
    message = error_of(write(tmp_path / "a.txt", "x\n"), label_field="label")
    assert message.startswith(f"{tmp_path}/a.txt: --label-field needs jsonl")


# -- JSON Lines and JSON ----------------------------------------------------------------------------------
def test_jsonl_dotted_path_with_list_index_and_labels(tmp_path):
    records = [{"turns": [{"text": "hi"}, {"text": "there"}], "y": 3},
               {"turns": [{"text": "a"}, {"text": "b"}], "y": True},
               {"turns": [{"text": "c"}, {"text": "d"}], "y": None},
               {"turns": [{"text": "e"}, {"text": "f"}]}]
    path = write(tmp_path / "a.ndjson", "\n".join(json.dumps(r) for r in records) + "\n\n")
    docs, counts = read(path, text_field="turns.1.text", label_field="y")
    assert [(d.text, d.label) for d in docs] == [("there", "3"), ("b", "True"), ("d", None), ("f", None)]
    assert docs[1].location == f"{path}:2"
    assert counts["records"] == 4 and counts["bad_records"] == 0


def test_jsonl_nested_object_path(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"meta": {"body": "deep", "lang": "en"}}\n')
    assert [(d.text, d.label) for d in read(path, text_field="meta.body", label_field="meta.lang")[0]] == [
        ("deep", "en")]


def test_jsonl_missing_text_field_names_file_line_and_field(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"meta": {"body": "ok"}}\n{"meta": {}}\n{"meta": {"body": 5}}\n')
    message = error_of(path, text_field="meta.body")
    assert message == (f"{path}:2: no text at --text-field 'meta.body' (not found); "
                       "use --skip-bad-records to skip such records")
    docs, counts = read(path, text_field="meta.body", skip_bad_records=True)
    assert [d.text for d in docs] == ["ok"]
    assert counts["bad_records"] == 2 and counts["records"] == 3


def test_jsonl_null_text_and_non_object_record_are_bad(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": null}\n"just a string"\n')
    assert f"{path}:1: no text at --text-field 'text' (found null)" in error_of(path)
    path = write(tmp_path / "b.jsonl", '"just a string"\n')
    assert f"{path}:1: record is not a JSON object (found a string)" in error_of(path)


def test_jsonl_malformed_line_errors_or_is_skipped_and_counted(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a"}\n{"text": "b" "c"}\n{"text": "d"}\n{oops\n')
    assert error_of(path) == (f"{path}:2: invalid JSON (Expecting ',' delimiter); "
                              "use --skip-bad-records to skip such records")
    docs, counts = read(path, skip_bad_records=True)
    assert [d.text for d in docs] == ["a", "d"]
    assert counts["bad_records"] == 2 and counts["records"] == 4


@given(st.lists(st.text(st.characters(blacklist_categories=("Cs",)))))
@settings(max_examples=50, deadline=None)
def test_jsonl_round_trips_any_texts(values):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.jsonl")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.writelines(json.dumps({"text": v}, ensure_ascii=False) + "\n" for v in values)
        docs, counts = read(path)
    assert [d.text for d in docs] == values
    assert counts["records"] == len(values)


def test_json_array_of_objects_and_strings_with_record_lines(tmp_path):
    path = write(tmp_path / "a.json", '[\n  {"text": "one", "label": 1},\n  "two",\n  {"text": "three"}\n]\n')
    docs, counts = read(path, label_field="label")
    assert docs == [RawDocument("one", f"{path}:2", "1"), RawDocument("two", f"{path}:3", None),
                    RawDocument("three", f"{path}:4", None)]
    assert counts["records"] == 3


def test_json_bad_inputs(tmp_path):
    path = write(tmp_path / "a.json", '{"text": "x"}')
    assert "a.json: a .json input must be a JSON array" in error_of(path)
    path = write(tmp_path / "b.json", '[\n{"text": "x"}\n{"text": "y"}]')
    assert error_of(path).startswith(f"{path}:3: invalid JSON (Expecting ',' delimiter")
    path = write(tmp_path / "c.json", '[{"text": "x"}, {"name": "y"}]')
    assert f"{path}:1: no text at --text-field 'text'" in error_of(path)
    assert texts(path, skip_bad_records=True) == ["x"]
    path = write(tmp_path / "d.json", "[" + ", ".join(['"xxxxxxxxxx"'] * 20) + "]")
    assert "d.json: JSON file larger than 100 bytes (--max-record-bytes)" in error_of(path, max_record_bytes=100)



def test_json_trailing_comma_is_invalid(tmp_path):
    path = write(tmp_path / "a.json", '[{"text": "a"},]')
    assert error_of(path) == f"{path}:1: invalid JSON (trailing comma before ']')"
    path = write(tmp_path / "b.json", '[\n"a",\n"b" ,\n  ]\n')
    assert error_of(path) == f"{path}:3: invalid JSON (trailing comma before ']')"
    assert texts(write(tmp_path / "c.json", "[ ]")) == []


def test_deeply_nested_json_is_a_malformed_record(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write(tmp_path / "a.jsonl", '{"text": "a"}\n' + deep + '\n{"text": "b"}\n' + "[" * 100_000 + "\n")
    assert error_of(path) == (f"{path}:2: invalid JSON (nested too deeply); "
                              "use --skip-bad-records to skip such records")
    docs, counts = read(path, skip_bad_records=True)
    assert [d.text for d in docs] == ["a", "b"]
    assert counts["bad_records"] == 2 and counts["records"] == 4
    path = write(tmp_path / "b.json", '[\n{"text": "a"},\n' + deep + "\n]")
    assert error_of(path) == f"{path}:3: invalid JSON (nested too deeply)"
    assert error_of(path, skip_bad_records=True) == f"{path}:3: invalid JSON (nested too deeply)"

# -- CSV and TSV ---------------------------------------------------------------------------------------
def test_csv_quoted_multiline_field_is_located_at_its_first_line(tmp_path):
    path = write(tmp_path / "a.csv", 'id,body,y\n1,"line one\r\nline two, with comma",pos\n\n2,plain,\n')
    docs, counts = read(path, text_column="body", label_field="y")
    assert docs == [RawDocument("line one\nline two, with comma", f"{path}:2", "pos"),
                    RawDocument("plain", f"{path}:5", None)]
    assert counts["records"] == 2


def test_tsv(tmp_path):
    path = write(tmp_path / "a.tsv", "text\tlabel\nhello, world\t0\nbye\t1\n")
    docs, _ = read(path, label_field="label")
    assert [(d.text, d.label) for d in docs] == [("hello, world", "0"), ("bye", "1")]


def test_csv_missing_column_lists_available_columns(tmp_path):
    path = write(tmp_path / "a.csv", "id,body\n1,x\n")
    assert error_of(path) == f"{path}: no column 'text' (--text-column); columns: id, body"
    assert error_of(path, text_column="body", label_field="y") == (
        f"{path}: no column 'y' (--label-field); columns: id, body")


def test_csv_short_row_is_a_bad_record_and_empty_file_needs_header(tmp_path):
    path = write(tmp_path / "a.csv", "id,text\n1,x\n2\n")
    assert f"{path}:3: no text at --text-column 'text'" in error_of(path)
    assert texts(path, skip_bad_records=True) == ["x"]
    assert "needs a header row" in error_of(write(tmp_path / "b.csv", ""))


# -- Parquet and Arrow -----------------------------------------------------------------------------------
TABLE = pa.table({"id": [1, 2, 3],
                  "meta": [{"body": "alpha", "n": 1}, {"body": "beta", "n": 2}, None],
                  "label": [3, None, 5]})


def test_parquet_struct_path_labels_and_null_text(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(TABLE, path)
    assert error_of(path, text_field="meta.body") == (
        f"{path}:row 3: no text at --text-field 'meta.body' (found null); "
        "use --skip-bad-records to skip such records")
    docs, counts = read(path, text_field="meta.body", label_field="label", skip_bad_records=True)
    assert docs == [RawDocument("alpha", f"{path}:row 1", "3"), RawDocument("beta", f"{path}:row 2", None)]
    assert counts["records"] == 3 and counts["bad_records"] == 1
    assert counts["input_bytes"] == path.stat().st_size


def test_parquet_missing_column_and_wrong_type(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(TABLE, path)
    assert error_of(path) == f"{path}: no column 'text' (--text-field 'text'); columns: id, meta, label"
    assert "column 'meta' has no struct field 'title'" in error_of(path, text_field="meta.title")
    assert "column 'id' (--text-field) has type int64" in error_of(path, text_field="id")
    long = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": ["short", "é" * 60]}), long)
    assert error_of(long, max_record_bytes=100).startswith(f"{long}:row 2: record longer than 100 bytes")


@pytest.mark.parametrize("writer", ["file", "stream"])
def test_arrow_file_and_stream(tmp_path, writer):
    path = tmp_path / ("a.arrow" if writer == "file" else "a.ipc")
    table = pa.table({"text": ["x", "y", "z"], "label": ["a", "b", None]})
    open_writer = pa.ipc.new_file if writer == "file" else pa.ipc.new_stream
    with open_writer(str(path), table.schema) as w:
        w.write_table(table, max_chunksize=2)
    docs, counts = read(path, label_field="label")
    assert [(d.text, d.label, d.location) for d in docs] == [
        ("x", "a", f"{path}:row 1"), ("y", "b", f"{path}:row 2"), ("z", None, f"{path}:row 3")]
    assert counts["input_bytes"] == path.stat().st_size


def test_arrow_garbage_is_refused(tmp_path):
    path = write(tmp_path / "a.feather", b"this is not arrow at all")
    assert error_of(path).startswith(f"{path}: not a readable arrow file")


# -- compression ---------------------------------------------------------------------------------------
JSONL = '{"text": "one"}\n{"text": "two"}\n'


@pytest.mark.parametrize("suffix,compress", [(".gz", gzip.compress), (".bz2", bz2.compress),
                                             (".xz", lzma.compress)])
def test_compressed_inputs(tmp_path, suffix, compress):
    path = write(tmp_path / f"a.jsonl{suffix}", compress(JSONL.encode()))
    docs, counts = read(path)
    assert [d.text for d in docs] == ["one", "two"]
    assert docs[1].location == f"{path}:2"
    assert counts["input_bytes"] == path.stat().st_size


def test_zstd_input(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    path = write(tmp_path / "a.txt.zst", zstandard.ZstdCompressor().compress(b"para\n\nother\n"))
    assert texts(path) == ["para", "other"]


def test_zstd_without_zstandard_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    path = write(tmp_path / "a.txt.zst", b"\x28\xb5\x2f\xfd")
    assert error_of(path) == f"{path}: reading .zst files needs the zstandard package: pip install 'lmkit[zstd]'"


def test_corrupt_gzip_names_the_file(tmp_path):
    path = write(tmp_path / "a.txt.gz", b"plain text, not gzip\n")
    assert error_of(path).startswith(f"{path}: corrupt or not gzip data")
    truncated = write(tmp_path / "b.txt.gz", gzip.compress(b"x" * 1000)[:-12])
    assert error_of(truncated).startswith(f"{truncated}: corrupt or not gzip data")


def test_input_bytes_equals_file_size_for_uncompressed_file(tmp_path):
    path = write(tmp_path / "a.txt", "word " * 50_000 + "\n\n" + "more\n" * 30_000)
    counts = collections.Counter()
    seen = []
    for _ in iter_documents(str(path), ReadOptions(split_by="line"), counts):
        seen.append(counts["input_bytes"])
    assert seen[0] < path.stat().st_size  # counted as the file is read, not only at the end
    assert counts["input_bytes"] == path.stat().st_size


# -- encoding and binary input -------------------------------------------------------------------------
BAD_UTF8 = b"good line\n\nbad \xff here\nsecond \xfe line\n\nfine\n"


def test_invalid_utf8_strict_names_line_and_column(tmp_path):
    path = write(tmp_path / "a.txt", BAD_UTF8)
    assert error_of(path) == (f"{path}:3: invalid UTF-8 (byte 0xff at column 5); "
                              "use --encoding-errors replace|skip")
    jsonl = write(tmp_path / "b.jsonl", b'{"text": "ok"}\n{"text": "\xc3\xa9t\xe9"}\n')
    assert f"{jsonl}:2: invalid UTF-8 (byte 0xe9 at column 13)" in error_of(jsonl)


def test_invalid_utf8_replace_counts_each_record_once(tmp_path):
    docs, counts = read(write(tmp_path / "a.txt", BAD_UTF8), encoding_errors="replace")
    assert [d.text for d in docs] == ["good line", "bad \ufffd here\nsecond \ufffd line", "fine"]
    assert counts["encoding_replaced"] == 1 and counts["encoding_skipped"] == 0


def test_invalid_utf8_skip_drops_the_record(tmp_path):
    docs, counts = read(write(tmp_path / "a.txt", BAD_UTF8), encoding_errors="skip", split_by="line")
    assert [d.text for d in docs] == ["good line", "fine"]
    assert counts["encoding_skipped"] == 2 and counts["records"] == 4


def test_invalid_utf8_in_json_array_and_csv(tmp_path):
    path = write(tmp_path / "a.json", b'[\n"ok",\n"b\xffd"\n]')
    assert f"{path}:3: invalid UTF-8 (byte 0xff at column 3)" in error_of(path)
    docs, counts = read(path, encoding_errors="replace")
    assert [d.text for d in docs] == ["ok", "b\ufffdd"] and counts["encoding_replaced"] == 1
    csv_path = write(tmp_path / "a.csv", b'text\n"multi\nb\xffd"\nok\n')
    docs, counts = read(csv_path, encoding_errors="skip")
    assert [d.text for d in docs] == ["ok"] and counts["encoding_skipped"] == 1



def test_lone_surrogate_escapes_in_jsonl_follow_encoding_errors(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "ok \\ud83d\\ude00"}\n{"text": "a \\ud800 b"}\n'
                                       '{"text": "x", "label": "\\udfff"}\n')
    assert error_of(path) == (f"{path}:2: invalid UTF-8 (lone surrogate \\ud800 in the text); "
                              "use --encoding-errors replace|skip")
    docs, counts = read(path, label_field="label", encoding_errors="replace")
    assert [(d.text, d.label) for d in docs] == [("ok \U0001f600", None), ("a \ufffd b", None), ("x", "\ufffd")]
    assert counts["encoding_replaced"] == 2 and counts["encoding_skipped"] == 0
    docs, counts = read(path, label_field="label", encoding_errors="skip")
    assert [d.text for d in docs] == ["ok \U0001f600"]
    assert counts["encoding_skipped"] == 2 and counts["records"] == 3
    label = write(tmp_path / "b.jsonl", '{"text": "x", "label": "\\udfff"}\n')
    assert f"{label}:1: invalid UTF-8 (lone surrogate \\udfff in the label)" in error_of(label, label_field="label")
    # Invalid bytes and a lone surrogate in one record: one record replaced, counted once.
    both = write(tmp_path / "c.jsonl", b'{"text": "\xff \\udc00"}\n')
    docs, counts = read(both, encoding_errors="replace")
    assert [d.text for d in docs] == ["\ufffd \ufffd"] and counts["encoding_replaced"] == 1
    for doc in docs:
        doc.text.encode("utf-8")


def test_lone_surrogate_escapes_in_json_array_follow_encoding_errors(tmp_path):
    path = write(tmp_path / "a.json", '[\n"ok",\n{"text": "\\udc80z"},\n"\\ud800"\n]')
    assert error_of(path) == (f"{path}:3: invalid UTF-8 (lone surrogate \\udc80 in the text); "
                              "use --encoding-errors replace|skip")
    docs, counts = read(path, encoding_errors="replace")
    assert [d.text for d in docs] == ["ok", "\ufffdz", "\ufffd"] and counts["encoding_replaced"] == 2
    docs, counts = read(path, encoding_errors="skip")
    assert [d.text for d in docs] == ["ok"] and counts["encoding_skipped"] == 2

def test_nul_byte_early_means_binary(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"text": "x"}\n\x00\x01\x02')
    assert error_of(path) == f"{path} looks binary (NUL byte at offset 14); text input must be UTF-8"
    utf16 = write(tmp_path / "b.txt.gz", gzip.compress("hello".encode("utf-16-le")))
    assert "b.txt.gz looks binary (NUL byte at offset 1)" in error_of(utf16)
    late = write(tmp_path / "c.txt", b"a" * 9000 + b"\x00b\n")  # left for the cleaner
    assert texts(late) == ["a" * 9000 + "\x00b"]


# -- oversized records ----------------------------------------------------------------------------------
MB = 2**20


def test_oversized_line_is_refused_or_skipped(tmp_path):
    long_record = '{"text": "' + "x" * (3 * MB) + '"}'
    path = write(tmp_path / "a.jsonl", '{"text": "before"}\n' + long_record + '\n{"text": "after"}\n')
    assert error_of(path, max_record_bytes=MB) == (
        f"{path}:2: record longer than {MB} bytes (--max-record-bytes); use --skip-bad-records to skip such records")
    docs, counts = read(path, max_record_bytes=MB, skip_bad_records=True)
    assert [(d.text, d.location) for d in docs] == [("before", f"{path}:1"), ("after", f"{path}:3")]
    assert counts["bad_records"] == 1 and counts["records"] == 3


def test_oversized_paragraph_and_file_are_skipped_whole(tmp_path):
    path = write(tmp_path / "a.txt", "short\n\n" + ("y" * 60 + "\n") * 5 + "\nlast\r\n")
    assert f"{path}:3: record longer than 200 bytes" in error_of(path, max_record_bytes=200)
    docs, counts = read(path, max_record_bytes=200, skip_bad_records=True)
    assert [(d.text, d.location) for d in docs] == [("short", f"{path}:1"), ("last", f"{path}:9")]
    assert counts["bad_records"] == 1
    docs, counts = read(path, max_record_bytes=200, skip_bad_records=True, split_by="file")
    assert docs == [] and counts["bad_records"] == 1 and counts["input_bytes"] == path.stat().st_size


def test_oversized_csv_line_is_skipped_but_not_inside_a_quoted_field(tmp_path):
    path = write(tmp_path / "a.csv", "text\nok\n" + "z" * 500 + "\nafter\n")
    assert texts(path, max_record_bytes=100, skip_bad_records=True) == ["ok", "after"]
    quoted = write(tmp_path / "b.csv", 'text\n"' + "z\n" * 100 + '"\nafter\n')
    assert "b.csv:2: record longer than 100 bytes (--max-record-bytes); a quoted field spanning lines" in \
        error_of(quoted, max_record_bytes=100, skip_bad_records=True)


# -- stdin, paths and options ------------------------------------------------------------------------------
def test_stdin_defaults_to_txt_and_honours_input_format():
    docs, counts = read("-", stdin=io.BytesIO(b"a\nb\n\nc\n"))
    assert [(d.text, d.location) for d in docs] == [("a\nb", "<stdin>:1"), ("c", "<stdin>:4")]
    assert counts["input_bytes"] == 7
    docs, _ = read("-", stdin=io.BytesIO(b'{"t": "x"}\n{"t": 1}\n'), input_format="jsonl", text_field="t",
                   skip_bad_records=True)
    assert [d.text for d in docs] == ["x"]
    message = error_of("-", stdin=io.BytesIO(b"{bad\n"), input_format="jsonl")
    assert message.startswith("<stdin>:1: invalid JSON")


def test_stdin_arrow_stream_and_no_parquet():
    sink = io.BytesIO()
    table = pa.table({"text": ["p", "q"]})
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    docs, _ = read("-", stdin=io.BytesIO(sink.getvalue()), input_format="arrow")
    assert [(d.text, d.location) for d in docs] == [("p", "<stdin>:row 1"), ("q", "<stdin>:row 2")]
    assert error_of("-", stdin=io.BytesIO(b""), input_format="parquet").startswith(
        "<stdin>: parquet cannot be read from stdin")


def test_input_format_overrides_the_suffix(tmp_path):
    path = write(tmp_path / "data.log", "text\nfrom csv\n")
    assert texts(path, input_format="csv") == ["from csv"]
    assert "data.log: unsupported file type; supported: .txt" in error_of(path)


def test_missing_file_and_directory_are_named(tmp_path):
    assert error_of(tmp_path / "nope.txt") == f"{tmp_path}/nope.txt: no such file"
    (tmp_path / "d.txt").mkdir()
    assert error_of(tmp_path / "d.txt") == f"{tmp_path}/d.txt: is a directory, not a file"


def test_unreadable_file_is_named(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(streams, "open", denied, raising=False)  # chmod does not stop root, who runs CI here
    path = write(tmp_path / "a.txt", "x")
    assert error_of(path) == f"{path}: permission denied"


def test_read_options_report_all_problems_together():
    with pytest.raises(ConfigError) as info:
        ReadOptions(split_by="sentence", encoding_errors="ignore", max_record_bytes=0, text_field="a..b")
    assert len(info.value.problems) == 4
    assert "--split-by must be one of line, paragraph, file (got 'sentence')" in info.value.problems


def test_resolve_inputs_directory_recursion_is_sorted_and_filtered(tmp_path):
    for name in ["b/z.txt", "b/a.jsonl.gz", "a.csv", "notes.pdf", ".hidden/x.txt", "b/._x.txt", "c/y.parquet.gz"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert resolve_inputs([str(tmp_path)]) == [f"{tmp_path}/a.csv", f"{tmp_path}/b/a.jsonl.gz",
                                               f"{tmp_path}/b/z.txt"]



def test_resolve_inputs_skips_artifacts_inside_an_input_directory(tmp_path):
    # `lmkit preprocess corpus/ --out corpus/data` must not read its own output back next time.
    corpus = tmp_path / "corpus"
    for name in ["a.txt", "sub/b.jsonl", "data/manifest.json", "data/shard.jsonl", "data/deeper/c.txt",
                 "sub/tok/manifest.json", "sub/tok/vocab.txt"]:
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_bytes(b"")
    assert resolve_inputs([str(corpus)]) == [f"{corpus}/a.txt", f"{corpus}/sub/b.jsonl"]
    with pytest.raises(UserError) as info:
        resolve_inputs([str(corpus / "data")])
    assert str(info.value) == f"{corpus}/data: is an lmkit artifact, not raw input"

def test_resolve_inputs_globs_stdin_and_dedupe(tmp_path):
    for name in ["b.txt", "a.txt", "sub/c.txt", "d.md"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x")
    got = resolve_inputs([f"{tmp_path}/**/*.txt", "-", f"{tmp_path}/a.txt", f"{tmp_path}/./d.md", "-",
                          f"{tmp_path}/d.md"])
    assert got == [f"{tmp_path}/a.txt", f"{tmp_path}/b.txt", f"{tmp_path}/sub/c.txt", "-", f"{tmp_path}/./d.md"]


def test_resolve_inputs_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.pdf").write_text("x")
    cases = {f"{tmp_path}/missing.txt": f"{tmp_path}/missing.txt: no such file or directory",
             f"{tmp_path}/*.jsonl": f"{tmp_path}/*.jsonl: no file matches this pattern",
             f"{tmp_path}/*.pdf": f"{tmp_path}/*.pdf: pattern matches no supported file; supported: .txt",
             str(tmp_path / "empty"): f"{tmp_path}/empty: directory has no supported file; supported: .txt",
             str(tmp_path / "x.pdf"): f"{tmp_path}/x.pdf: unsupported file type; supported: .txt, .text, .md"}
    for spec, expected in cases.items():
        with pytest.raises(UserError, match=re.escape(expected)):
            resolve_inputs([spec])
    with pytest.raises(UserError, match="no inputs given"):
        resolve_inputs([])
    assert resolve_inputs([str(tmp_path / "x.pdf")], input_format="txt") == [str(tmp_path / "x.pdf")]


# -- pairs: --text-pair-field ---------------------------------------------------------------------------
def test_the_pair_field_is_read_from_jsonl_csv_and_parquet(tmp_path):
    jsonl = write(tmp_path / "a.jsonl", '{"text": "a", "second": {"text": "b"}, "y": 1}\n')
    assert read(jsonl, text_pair_field="second.text", label_field="y")[0] == [
        RawDocument("a", f"{jsonl}:1", "1", "b")]
    csv_path = write(tmp_path / "a.csv", "text,hypothesis,label\npremise,claim,yes\n")
    assert read(csv_path, text_pair_field="hypothesis", label_field="label")[0] == [
        RawDocument("premise", f"{csv_path}:2", "yes", "claim")]
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["p"], "pair": [{"text": "h"}]}), parquet)
    assert read(parquet, text_pair_field="pair.text")[0] == [RawDocument("p", f"{parquet}:row 1", None, "h")]
    assert read(jsonl)[0][0].text_pair is None  # without the flag: single texts
    assert error_of(write(tmp_path / "a.txt", "x\n"), text_pair_field="pair").startswith(
        f"{tmp_path}/a.txt: --text-pair-field needs jsonl")
    assert error_of(csv_path, text_pair_field="second") == (
        f"{csv_path}: no column 'second' (--text-pair-field); columns: text, hypothesis, label")


def test_a_record_without_its_pair_text_is_a_bad_record_naming_file_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "a", "pair": "b"}\n{"text": "c"}\n{"text": "d", "pair": 3}\n')
    assert error_of(path, text_pair_field="pair") == (
        f"{path}:2: no text at --text-pair-field 'pair' (not found); use --skip-bad-records to skip such records")
    docs, counts = read(path, text_pair_field="pair", skip_bad_records=True)
    assert [(d.text, d.text_pair) for d in docs] == [("a", "b")] and counts["bad_records"] == 2
    short = write(tmp_path / "a.csv", "text,pair\nx,y\nz\n")
    assert f"{short}:3: no text at --text-pair-field 'pair' (the row has 1 fields" in error_of(
        short, text_pair_field="pair")
    parquet = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["p", "q"], "pair": ["h", None]}), parquet)
    assert error_of(parquet, text_pair_field="pair").startswith(
        f"{parquet}:row 2: no text at --text-pair-field 'pair' (found null)")
