"""`lmkit preprocess` driven as a user drives it: flags, config files, reruns, signals."""

import json
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from lmkit import artifacts
from lmkit.cli import app
from tests.conftest import invoke_lmkit, run_lmkit

runner = CliRunner()


def test_print_config_round_trips_through_config(tmp_path, text_corpus):
    printed = runner.invoke(app, ["preprocess", str(text_corpus), "--out", str(tmp_path / "o"),
                                  "--vocab-size", "500", "--filters", "too_short,few_words", "--print-config"])
    assert printed.exit_code == 0, printed.output
    assert "vocab_size = 500" in printed.output and 'filters = ["too_short", "few_words"]' in printed.output
    config_file = tmp_path / "c.toml"
    config_file.write_text(printed.output)
    again = runner.invoke(app, ["preprocess", "--config", str(config_file), "--print-config"])
    assert again.output == printed.output
    assert not (tmp_path / "o").exists()  # --print-config does no work


def test_flags_override_the_config_file(tmp_path, text_corpus):
    config_file = tmp_path / "c.toml"
    config_file.write_text(f'inputs = ["{text_corpus}"]\nout = "{tmp_path / "o"}"\nvocab_size = 500\nseed = 3\n')
    result = runner.invoke(app, ["preprocess", "--config", str(config_file), "--seed", "7", "--print-config"])
    assert "vocab_size = 500" in result.output and "seed = 7" in result.output


def test_unknown_key_and_bad_values_reported_together(tmp_path):
    config_file = tmp_path / "c.toml"
    config_file.write_text('out = "x"\nvocab = 100\nval_fraction = 2.0\n')
    result = invoke_lmkit("preprocess", "in.txt", "--config", str(config_file), "--vocab-size", "10")
    assert result.returncode == 1
    assert f"error: {config_file}: unknown key 'vocab'" in result.stderr
    assert "error: --vocab-size: must be at least" in result.stderr
    assert "error: --val-fraction: must be in [0, 1)" in result.stderr


def test_rerun_is_up_to_date_then_refuses_a_different_one(tmp_path, text_corpus):
    out = tmp_path / "data"
    args = ["preprocess", str(text_corpus), "--out", str(out), "--vocab-size", "400"]
    first = invoke_lmkit(*args, check=True)
    assert "documents kept" in first.stdout
    manifest_before = (out / "manifest.json").read_bytes()
    second = invoke_lmkit(*args, check=True)
    assert "up to date" in second.stdout and (out / "manifest.json").read_bytes() == manifest_before
    third = invoke_lmkit(*args[:-1], "500")
    assert third.returncode == 1 and "use --force to replace it" in third.stderr
    assert (out / "manifest.json").read_bytes() == manifest_before
    forced = invoke_lmkit(*args[:-1], "500", "--force", check=True)
    assert "documents kept" in forced.stdout
    assert artifacts.load(out).config["vocab_size"] == 500


def _start_reading_stdin(tmp_path, out):
    process = subprocess.Popen([sys.executable, "-m", "lmkit", "preprocess", "-", "--out", str(out),
                                "--vocab-size", "400"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdin.write("A first paragraph of text that keeps the reader busy for a while.\n\n")
    process.stdin.flush()
    deadline = time.time() + 30
    while not list(tmp_path.glob(f".{out.name}.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_exits_cleanly_without_artifact(tmp_path, signum, code):
    out = tmp_path / "data"
    process = _start_reading_stdin(tmp_path, out)
    assert list(tmp_path.glob(".data.tmp-*")), "the run never started writing"
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == code, stderr
    assert "no partial artifact was left" in stderr
    assert not out.exists() and not list(tmp_path.glob(".data.tmp-*"))


def test_concurrent_runs_on_one_output(tmp_path):
    out = tmp_path / "data"
    first = _start_reading_stdin(tmp_path, out)
    try:
        second = run_lmkit("preprocess", "-", "--out", str(out), input="other text\n")
        assert second.returncode == 1 and "another lmkit process is writing" in second.stderr
    finally:
        first.stdin.write("\n\n".join(f"Paragraph number {i} of the first writer, with enough words to keep."
                                      for i in range(60)))
        first.stdin.close()
        first.wait(timeout=60)
    assert first.returncode == 0, first.stderr.read()
    assert artifacts.load(out).stats["documents_kept"] > 0


def test_output_path_that_is_a_file(tmp_path, text_corpus):
    (tmp_path / "out").write_text("precious")
    result = invoke_lmkit("preprocess", str(text_corpus), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "exists and is a file" in result.stderr
    assert (tmp_path / "out").read_text() == "precious"


def test_glob_matching_nothing(tmp_path):
    result = invoke_lmkit("preprocess", str(tmp_path / "*.jsonl"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "no file matches this pattern" in result.stderr and "*.jsonl" in result.stderr


def test_manifest_records_resolved_config(tmp_path, text_corpus):
    invoke_lmkit("preprocess", str(text_corpus), "--out", str(tmp_path / "o"), "--vocab-size", "400",
                 "--split-by", "line", check=True)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["config"]["split_by"] == "line" and manifest["config"]["vocab_size"] == 400
    assert manifest["config"]["normalization"] == "NFC"  # defaults resolved, not omitted
