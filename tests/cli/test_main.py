"""The lmkit command itself: entry points, version, exit codes, output on a pipe."""

import subprocess
import sys

from typer.testing import CliRunner

from lmkit import __version__
from lmkit.cli import app
from tests.conftest import invoke_lmkit, run_lmkit


def test_version_from_module_and_console_script():
    result = run_lmkit("--version", check=True)
    assert result.stdout.strip() == f"lmkit {__version__}"
    assert CliRunner().invoke(app, ["--version"]).output.strip() == f"lmkit {__version__}"


def test_help_lists_every_command():
    result = run_lmkit("--help", check=True)
    for command in ("preprocess", "info", "verify", "lineage", "demo-corpus"):
        assert command in result.stdout


def test_commands_load_torch_only_when_they_run():
    """Stages named as "module:function" (pretrain, finetune, evaluate, export) are imported on use, and chat's
    loop imports its stage (and the chat templates' Jinja2) when it runs."""
    probe = ("import sys; from lmkit.cli import app; from typer.testing import CliRunner; "
             "[CliRunner().invoke(app, [c, '--help']) for c in ('pretrain', 'finetune', 'evaluate', 'export', "
             "'chat')]; "
             "print('torch' in sys.modules or 'jinja2' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_usage_error_exits_2():
    result = run_lmkit("preprocess", "x", "--out", "y", "--no-such-flag")
    assert result.returncode == 2 and "No such option" in result.stderr
    assert run_lmkit("no-such-command").returncode == 2


def test_user_error_is_one_line_exit_1(tmp_path):
    result = run_lmkit("preprocess", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing.txt" in lines[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_no_colour_or_live_bars_on_a_pipe(tmp_path, text_corpus):
    result = run_lmkit("preprocess", str(text_corpus), "--out", str(tmp_path / "o"), "--vocab-size", "400",
                       env={"NO_COLOR": "", "LMKIT_PROGRESS_INTERVAL": "0"}, check=True)
    assert "\x1b[" not in result.stdout + result.stderr
    assert "reading and cleaning:" in result.stderr and "tokenizing:" in result.stderr  # plain progress lines


def test_quiet_prints_only_results(tmp_path, text_corpus):
    result = run_lmkit("--quiet", "preprocess", str(text_corpus), "--out", str(tmp_path / "o"),
                       "--vocab-size", "400", env={"LMKIT_PROGRESS_INTERVAL": "0"}, check=True)
    assert result.stderr == "" and "documents kept" in result.stdout


def test_bad_progress_interval_is_a_warning_not_a_crash(tmp_path):
    result = run_lmkit("--version", env={"LMKIT_PROGRESS_INTERVAL": "abc"})
    assert result.returncode == 0 and "LMKIT_PROGRESS_INTERVAL='abc' is not a number" in result.stderr


def test_verbose_prints_step_details(tmp_path, text_corpus):
    result = invoke_lmkit("--verbose", "preprocess", str(text_corpus), "--out", str(tmp_path / "o"),
                          "--vocab-size", "400", env={"LMKIT_PROGRESS_INTERVAL": "1000"}, check=True)
    assert "(done in" in result.stderr  # a line per finished step, only with --verbose
    quiet = invoke_lmkit("preprocess", str(text_corpus), "--out", str(tmp_path / "p"), "--vocab-size", "400",
                         env={"LMKIT_PROGRESS_INTERVAL": "1000"}, check=True)
    assert "(done in" not in quiet.stderr
