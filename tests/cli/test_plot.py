"""`lmkit plot` as a user runs it: default output, several runs, and mistakes as exit code 1."""

import sys

import pytest
from typer.testing import CliRunner

from lmkit.cli import app
from tests.conftest import invoke_lmkit, train_tiny

pytest.importorskip("matplotlib")
runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    return train_tiny(dataset, tmp_path_factory.mktemp("cli-plot") / "run", max_steps=3, log_every=1).path.parent


def test_one_run_writes_into_its_directory_and_several_need_out(run_dir, tmp_path):
    result = invoke_lmkit("plot", str(run_dir), check=True)
    assert result.stdout.strip() == f"{run_dir / 'plots.png'}: training curves of 1 run(s)"
    assert (run_dir / "plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = invoke_lmkit("plot", str(run_dir), str(run_dir))
    assert result.returncode == 1 and "--out: required when plotting several runs" in result.stderr
    out = tmp_path / "sub" / "both.png"
    invoke_lmkit("plot", str(run_dir), str(run_dir), "--out", str(out), check=True)
    assert out.stat().st_size > 10_000


def test_mistakes_exit_1_naming_them(run_dir, tmp_path):
    result = invoke_lmkit("plot", str(run_dir), "--out", str(tmp_path / "plot.jpg"))
    assert result.returncode == 1 and "must be a .png file" in result.stderr
    result = invoke_lmkit("plot", str(tmp_path / "missing"))
    assert result.returncode == 1 and "no metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
    assert invoke_lmkit("plot").returncode in (0, 2)  # no argument: the help


def test_missing_matplotlib_names_the_extra(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = runner.invoke(app, ["plot", str(run_dir), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "lmkit plot needs matplotlib: pip install 'lmkit[plot]'" in result.output
