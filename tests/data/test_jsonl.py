"""The one JSONL reader behind finetune, evaluate and generate: records with FILE:LINE errors."""

import pytest

from lmkit.data.jsonl import json_objects, read_jsonl
from lmkit.errors import UserError


def test_records_with_their_locations_blank_lines_skipped(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"b": "x"}\n')
    assert list(read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:4", {"b": "x"})]


@pytest.mark.parametrize("text,message", [
    ('{"a": 1}\n{oops\n', r"in.jsonl:2: not valid JSON"),
    ('["a"]\n', r"in.jsonl:1: expected an object with a prompt"),
])
def test_bad_lines_are_named(text, message):
    with pytest.raises(UserError, match=message):
        list(json_objects(text, "in.jsonl", "an object with a prompt"))


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing.jsonl: no such file"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    (tmp_path / "latin1.jsonl").write_bytes(b'{"a": "\xe9"}\n')
    with pytest.raises(UserError, match=r"latin1.jsonl: not UTF-8 text \(byte 7\)"):
        list(read_jsonl(tmp_path / "latin1.jsonl"))
