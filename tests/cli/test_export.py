"""`lmkit export` as a user runs it: the result table, refusals and missing extras as exit codes."""

import sys

import pytest
from typer.testing import CliRunner

from lmkit.cli import app
from tests.conftest import invoke_lmkit, train_tiny

pytest.importorskip("transformers")
runner = CliRunner()
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory):
    return train_tiny(dataset, tmp_path_factory.mktemp("cli-export") / "run").path


def test_export_prints_what_it_wrote_then_is_up_to_date(checkpoint, tmp_path):
    out = tmp_path / "hf"
    result = invoke_lmkit("export", str(checkpoint), "--format", "hf", "--out", str(out), env=OFFLINE, check=True)
    assert "LlamaForCausalLM" in result.stdout and "token ids equal" in result.stdout
    assert "AutoModelForCausalLM.from_pretrained" in result.stdout
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    again = invoke_lmkit("export", str(checkpoint), "--out", str(out), env=OFFLINE, check=True)
    assert "up to date" in again.stdout
    assert invoke_lmkit("verify", str(out), check=True).returncode == 0
    lineage = invoke_lmkit("lineage", str(out), check=True).stdout
    assert "checkpoint: checkpoint" in lineage and "dataset: dataset" in lineage


def test_refusal_exits_1_naming_the_choice(dataset, tmp_path):
    source = train_tiny(dataset, tmp_path / "run", mlp="gelu").path
    result = invoke_lmkit("export", str(source), "--out", str(tmp_path / "hf"), env=OFFLINE)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "--mlp gelu" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "hf").exists()


def test_unknown_format_and_occupied_out(checkpoint, tmp_path):
    result = invoke_lmkit("export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "x"))
    assert result.returncode == 1 and "--format: 'onnx' is not one of hf" in result.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    result = invoke_lmkit("export", str(checkpoint), "--out", str(tmp_path / "busy"), "--force", env=OFFLINE)
    assert result.returncode == 1 and "refusing to replace it" in result.stderr
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"


def test_missing_transformers_names_the_extra(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 1
    assert "lmkit export --format hf needs transformers: pip install 'lmkit[hf]'" in result.output
