"""Awkward text through `lmkit preprocess`, end to end: a 200 MB line, empty input, a glob matching nothing,
CRLF line ends, NUL bytes, invalid UTF-8 under each policy and a broken JSON line.

An error exits 1 with one `error:` line naming the file (and line) and leaves no output directory; what
is accepted is read as the README's table of bad input promises.
"""

import json
import os
import subprocess
import sys
import tempfile

import pytest
from typer.testing import CliRunner

from lmkit import artifacts
from lmkit.cli import app
from lmkit.data.shards import read_shard
from lmkit.tokenizer import Tokenizer
from tests.conftest import paragraphs

runner = CliRunner()
MiB = 2**20
SKIP_HINT = "use --skip-bad-records to skip such records"


def preprocess(*args):
    return runner.invoke(app, ["preprocess", *map(str, args), "--vocab-size", "400", "--workers", "1"])


def assert_refused(result, message, out):
    assert result.exit_code == 1, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [f"error: {message}"]
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")] == []


def documents(dataset_dir):
    """The texts of every document in a dataset, decoded from its shards."""
    artifact = artifacts.load(dataset_dir)
    tokenizer = Tokenizer.from_artifact(dataset_dir / "tokenizer")
    return [tokenizer.decode(row["tokens"]) for split in artifact.stats["splits"].values()
            for shard in split["shards"] for row in read_shard(dataset_dir / shard["file"]).to_pylist()]


def shards(dataset_dir):
    artifact = artifacts.load(dataset_dir)
    return {split: [read_shard(dataset_dir / s["file"]).to_pylist() for s in stats["shards"]]
            for split, stats in artifact.stats["splits"].items()}


# -- a 200 MB line ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_line_file(tmp_path_factory):
    """30 paragraphs, one 200 MB line, 30 more; written a megabyte at a time (the test never holds it)."""
    path = tmp_path_factory.mktemp("long") / "corpus.txt"
    before, after = paragraphs(60)[:30], paragraphs(60)[30:]
    with open(path, "w") as f:
        f.write("\n\n".join(before) + "\n\n")
        megabyte = "word " * (MiB // 5)
        for _ in range(200):
            f.write(megabyte)
        f.write("\n\n" + "\n\n".join(after) + "\n")
    yield path, 2 * len(before) + 1, before + after
    path.unlink()


# Runs lmkit in the child and records the child's own peak RSS (VmHWM of its address space) at exit.
# getrusage would not do: Linux carries the parent's peak over to a forked child (the pytest process
# is large after the training tests), so a child's ru_maxrss can never be smaller than its parent's.
_MEASURED = """
import atexit, runpy, sys
report = sys.argv.pop(1)
def write_peak():
    with open("/proc/self/status") as status, open(report, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(write_peak)
sys.argv[0] = "lmkit"
runpy.run_module("lmkit", run_name="__main__")
"""


def run_measured(*args):
    """`lmkit ARGS` in a subprocess: (exit code, stderr, the peak resident memory of that process in bytes)."""
    with tempfile.NamedTemporaryFile("r", suffix=".peak") as report:
        result = subprocess.run([sys.executable, "-c", _MEASURED, report.name, *map(str, args)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "NO_COLOR": "1"})
        peak_kib = int(report.read() or 0)
    return result.returncode, result.stderr, peak_kib * 1024


def test_a_200_mb_line_is_refused_in_bounded_memory(long_line_file, tmp_path):
    path, line, _ = long_line_file
    out = tmp_path / "data"
    code, stderr, peak = run_measured("preprocess", path, "--out", out, "--vocab-size", "400")
    assert code == 1
    assert [e for e in stderr.splitlines() if e.startswith("error:")] == [
        f"error: {path}:{line}: record longer than {64 * MiB} bytes (--max-record-bytes); {SKIP_HINT}"]
    assert not out.exists()
    assert peak < 300 * MiB, peak  # the whole process, with a 200 MB line in its input
    # The same run with a 1 MiB limit holds at most 1 MiB of the line: the default may hold 64 MiB more,
    # never the 200 MB.
    _, _, peak_small_limit = run_measured("preprocess", path, "--out", out, "--vocab-size", "400",
                                          "--max-record-bytes", "1MiB")
    assert peak - peak_small_limit < 64 * MiB + 32 * MiB, (peak, peak_small_limit)


def test_a_200_mb_line_is_skipped_and_the_rest_kept(long_line_file, tmp_path):
    path, _, kept = long_line_file
    out = tmp_path / "data"
    code, stderr, _ = run_measured("preprocess", path, "--out", out, "--vocab-size", "400", "--skip-bad-records",
                                   "--filters", "none", "--no-near-dedup")
    assert code == 0, stderr
    stats = artifacts.load(out).stats
    assert stats["documents_in"] == len(kept) + 1 and stats["dropped"] == {"bad_record": 1}
    assert sorted(documents(out)) == sorted(kept)


# -- empty and missing input -----------------------------------------------------------------------------
def test_empty_file_is_refused(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    result = preprocess(tmp_path / "empty.txt", "--out", tmp_path / "data")
    assert_refused(result, f"{tmp_path / 'empty.txt'}: no documents left after cleaning and filtering "
                           "(no documents in the input); nothing was written", tmp_path / "data")


def test_glob_matching_nothing_is_refused(tmp_path):
    (tmp_path / "notes.md").write_text("not matched\n")
    pattern = tmp_path / "*.jsonl"
    assert_refused(preprocess(pattern, "--out", tmp_path / "data"), f"{pattern}: no file matches this pattern",
                   tmp_path / "data")


# -- line ends and control characters --------------------------------------------------------------------
def test_crlf_line_ends_give_the_same_dataset(dataset, text_corpus, tmp_path):
    lf = (text_corpus / "docs.txt").read_bytes()
    (tmp_path / "docs.txt").write_bytes(lf.replace(b"\n", b"\r\n"))
    result = preprocess(tmp_path / "docs.txt", "--out", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert shards(tmp_path / "data") == shards(dataset)  # same documents, tokens and splits as with LF


def test_nul_bytes_after_the_first_8_kib_are_removed_by_cleaning(dataset, text_corpus, tmp_path):
    text = (text_corpus / "docs.txt").read_bytes()
    at = text.index(b" ", 20_000)
    (tmp_path / "docs.txt").write_bytes(text[:at] + b"\0\0" + text[at:])
    result = preprocess(tmp_path / "docs.txt", "--out", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert shards(tmp_path / "data") == shards(dataset)


def test_nul_byte_in_the_first_8_kib_means_binary(text_corpus, tmp_path):
    text = (text_corpus / "docs.txt").read_bytes()
    (tmp_path / "docs.txt").write_bytes(text[:100] + b"\0" + text[100:])
    assert_refused(preprocess(tmp_path / "docs.txt", "--out", tmp_path / "data"),
                   f"{tmp_path / 'docs.txt'} looks binary (NUL byte at offset 100); text input must be UTF-8",
                   tmp_path / "data")


# -- invalid UTF-8 ---------------------------------------------------------------------------------------
@pytest.fixture
def invalid_utf8(dataset, text_corpus, tmp_path):
    """The corpus with byte 0xff inside a paragraph the clean dataset kept: (file, paragraph, line, column)."""
    kept = set(documents(dataset))
    text = (text_corpus / "docs.txt").read_text()
    paragraph = next(p for p in paragraphs() if p in kept and text.index(p) > 10_000)
    start = text.index(paragraph)
    cut = paragraph.index(" ", 30)
    data = text[: start + cut].encode() + b"\xff" + text[start + cut:].encode()
    (tmp_path / "docs.txt").write_bytes(data)
    return tmp_path / "docs.txt", paragraph, cut, text.count("\n", 0, start) + 1, cut + 1


def test_invalid_utf8_strict_names_file_line_and_column(invalid_utf8, tmp_path):
    path, _, _, line, column = invalid_utf8
    assert_refused(preprocess(path, "--out", tmp_path / "data"),
                   f"{path}:{line}: invalid UTF-8 (byte 0xff at column {column}); use --encoding-errors replace|skip",
                   tmp_path / "data")


def test_invalid_utf8_replace_keeps_the_paragraph_with_a_replacement_character(dataset, invalid_utf8, tmp_path):
    path, paragraph, cut, _, _ = invalid_utf8
    result = preprocess(path, "--out", tmp_path / "data", "--encoding-errors", "replace")
    assert result.exit_code == 0, result.output
    stats = artifacts.load(tmp_path / "data").stats
    assert stats["encoding_replaced"] == 1 and stats["dropped"] == artifacts.load(dataset).stats["dropped"]
    texts = documents(tmp_path / "data")
    assert paragraph[:cut] + "\ufffd" + paragraph[cut:] in texts and paragraph not in texts


def test_invalid_utf8_skip_drops_only_that_paragraph(dataset, invalid_utf8, tmp_path):
    path, paragraph, _, _, _ = invalid_utf8
    result = preprocess(path, "--out", tmp_path / "data", "--encoding-errors", "skip")
    assert result.exit_code == 0, result.output
    assert artifacts.load(tmp_path / "data").stats["dropped"]["invalid_utf8"] == 1
    assert sorted(documents(tmp_path / "data")) == sorted(set(documents(dataset)) - {paragraph})


# -- a broken JSON line ----------------------------------------------------------------------------------
@pytest.fixture
def jsonl_with_a_broken_line(tmp_path):
    lines = [json.dumps({"text": p}) for p in paragraphs()]
    broken = 42
    lines[broken - 1] = lines[broken - 1][:25]  # cut inside the string
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "docs.jsonl", broken, len(lines)


def test_broken_json_line_is_refused_naming_file_and_line(jsonl_with_a_broken_line, tmp_path):
    path, broken, _ = jsonl_with_a_broken_line
    assert_refused(preprocess(path, "--out", tmp_path / "data"),
                   f"{path}:{broken}: invalid JSON (Unterminated string starting at); {SKIP_HINT}", tmp_path / "data")


def test_broken_json_line_is_skipped_and_counted(jsonl_with_a_broken_line, tmp_path):
    path, broken, total = jsonl_with_a_broken_line
    result = preprocess(path, "--out", tmp_path / "data", "--skip-bad-records")
    assert result.exit_code == 0, result.output
    stats = artifacts.load(tmp_path / "data").stats
    assert stats["documents_in"] == total and stats["dropped"]["bad_record"] == 1
    assert paragraphs()[broken - 1] not in documents(tmp_path / "data")
