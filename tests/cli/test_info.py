import json

from tests.conftest import invoke_lmkit


def test_info_summarizes(dataset):
    result = invoke_lmkit("info", str(dataset), check=True)
    out = result.stdout
    assert "dataset (format 1)" in out and "parent: tokenizer" in out
    assert "stats.splits.train.documents" in out and "config.vocab_size" in out


def test_info_json_is_the_manifest(dataset):
    result = invoke_lmkit("info", str(dataset), "--json", check=True)
    assert json.loads(result.stdout) == json.loads((dataset / "manifest.json").read_text())


def test_info_on_a_plain_directory(tmp_path):
    result = invoke_lmkit("info", str(tmp_path))
    assert result.returncode == 1 and "not an lmkit artifact (no manifest.json)" in result.stderr
