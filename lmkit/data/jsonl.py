"""JSONL inputs of the commands that take records (finetune's SFT pairs, evaluate's choice and
generation tasks, generate's --input): one object per line, blank lines skipped, every problem
named as ``FILE:LINE`` like preprocess's errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from lmkit.errors import UserError


def read_text(path: str | Path) -> str:
    """A file's UTF-8 text; a missing, unreadable or non-UTF-8 file is a one-line UserError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def json_objects(text: str, source: str, expected: str = "a JSON object") -> Iterator[tuple[str, dict]]:
    """(``SOURCE:LINE``, record) for each non-blank line of ``text``; a line that is not JSON, or not
    an object, is refused with its location (``expected`` says what the line should hold)."""
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected {expected}")
        yield where, record


def read_jsonl(path: str | Path, expected: str = "a JSON object") -> Iterator[tuple[str, dict]]:
    """``json_objects`` of a file."""
    return json_objects(read_text(path), str(path), expected)


def first_record(path: str | Path) -> dict | None:
    """The first record of a JSONL file, to tell what kind of data it holds (finetune --task auto); None when it
    is empty, or its first line is not a JSON object (the reader of the chosen task reports that with its line)."""
    for line in read_text(path).split("\n"):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return None
            return record if isinstance(record, dict) else None
    return None
