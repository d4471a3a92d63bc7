"""`lmkit verify`: every kind of tampering is found and named; nothing downstream trusts it."""

import json
import shutil

import pytest

from lmkit import artifacts
from tests.conftest import invoke_lmkit


@pytest.fixture
def copy(dataset, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(dataset, target)
    return target


def test_intact_dataset_verifies(copy):
    result = invoke_lmkit("verify", str(copy), check=True)
    assert f"ok: {copy} (dataset" in result.stdout and f"ok: {copy}/tokenizer (tokenizer" in result.stdout


def flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,name,message", [
    (lambda d: flip_byte(d / "train-00000.arrow"), "train-00000.arrow", "content changed"),
    (lambda d: flip_byte(d / "tokenizer" / "tokenizer.model"), "tokenizer/tokenizer.model", "content changed"),
    (lambda d: (d / "train-00000.arrow").write_bytes((d / "train-00000.arrow").read_bytes()[:100]),
     "train-00000.arrow", "size 100 bytes"),
    (lambda d: (d / "validation-00000.arrow").unlink(), "validation-00000.arrow", "missing"),
    (lambda d: (d / "manifest.json").unlink(), "manifest.json", "not an lmkit artifact"),
])
def test_tampering_named_with_exit_1(copy, damage, name, message):
    damage(copy)
    result = invoke_lmkit("verify", str(copy))
    assert result.returncode == 1
    named = f"{copy}: " if name == "manifest.json" else f"{copy}/{name}"
    assert named in result.stderr and message in result.stderr


def test_edited_manifest_detected(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stats"]["documents_kept"] += 1
    manifest["recipe"] = "0" * 64  # an edit that would make a stale dataset look up to date
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = invoke_lmkit("verify", str(copy))
    assert result.returncode == 1 and "id does not match its contents" in result.stderr


def test_stage_refuses_a_damaged_parent(copy, tmp_path, text_corpus):
    flip_byte(copy / "tokenizer" / "tokenizer.model")
    result = invoke_lmkit("preprocess", str(text_corpus), "--tokenizer", str(copy / "tokenizer"),
                          "--out", str(tmp_path / "child"))
    assert result.returncode == 1 and "tokenizer.model: content changed" in result.stderr
    assert not (tmp_path / "child").exists()
    with pytest.raises(artifacts.ArtifactError):
        artifacts.load(copy)
