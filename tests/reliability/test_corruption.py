"""Damaged artifacts: every kind of damage to a dataset, its tokenizer and a checkpoint is found by
`lmkit verify` and by every stage that loads the artifact, which names the file, exits 1 and writes nothing.

Cases: 3 artifacts x 6 corruptions = 18 damaged artifacts. Each is checked by `lmkit verify` (18) and by
the stages that load it: the tokenizer by `preprocess --tokenizer` (6), the dataset by `pretrain` (6), the
checkpoint by `pretrain --init-from` and `pretrain --resume` (12): 42 detections, one test each.
"""

import hashlib
import json
import shutil

import pytest
from typer.testing import CliRunner

from lmkit.artifacts import MANIFEST
from lmkit.cli import app
from tests.conftest import train_tiny

runner = CliRunner()

TRAIN = ["--seq-len", "32", "--micro-batch", "4", "--eval-every", "0", "--checkpoint-every", "0",
         "--precision", "fp32", "--threads", "1"]

# The file damaged in each artifact, and the artifact's place inside what a test copies.
DATA_FILE = {"dataset": "train-00000.arrow", "tokenizer": "tokenizer.model", "checkpoint": "model.safetensors"}


def flip_byte(directory, name):
    path = directory / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return f"{path}: content changed (sha256 mismatch)"


def truncate(directory, name):
    path = directory / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path}: size {len(data) // 2} bytes, manifest says {len(data)}"


def delete(directory, name):
    (directory / name).unlink()
    return f"{directory / name}: missing"


def delete_manifest(directory, name):
    (directory / MANIFEST).unlink()
    return f"{directory}: not an lmkit artifact (no {MANIFEST})"


def edit_manifest(directory, change):
    manifest = json.loads((directory / MANIFEST).read_text())
    change(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def edit_stat(directory, name):
    """Only a statistic changes (no file, no id): the manifest's checksum shows it."""
    def change(manifest):
        key = next(k for k, v in sorted(manifest["stats"].items()) if type(v) is int and k != "step")
        manifest["stats"][key] += 1
    edit_manifest(directory, change)
    return f"{directory / MANIFEST}: checksum does not match (the manifest was edited)"


def edit_sha256(directory, name):
    """The manifest now lists a different hash for an intact file."""
    def change(manifest):
        manifest["files"][name]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    edit_manifest(directory, change)
    return f"{directory / name}: content changed (sha256 mismatch)"


CORRUPTIONS = {"flip-byte": flip_byte, "truncate": truncate, "delete": delete, "no-manifest": delete_manifest,
               "edit-stat": edit_stat, "edit-sha256": edit_sha256}
CONSUMERS = {"tokenizer": ["verify", "preprocess --tokenizer"], "dataset": ["verify", "pretrain"],
             "checkpoint": ["verify", "pretrain --init-from", "pretrain --resume"]}
CASES = [(artifact, corruption, consumer) for artifact, consumers in CONSUMERS.items()
         for corruption in CORRUPTIONS for consumer in consumers]
assert len(CASES) == 42


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    """A tiny pretraining run whose only checkpoint is final/ (the one --resume continues from)."""
    out = tmp_path_factory.mktemp("corruption") / "run"
    train_tiny(dataset, out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["final"]
    return out


def snapshot(directory):
    """Every entry under ``directory`` with its bytes, hidden ones included."""
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
            for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize("artifact,corruption,consumer", CASES,
                         ids=[f"{a}-{c}-{s.replace(' --', '-')}" for a, c, s in CASES])
def test_damage_is_named_and_nothing_is_written(artifact, corruption, consumer, dataset, text_corpus, run_dir,
                                                tmp_path):
    if artifact == "checkpoint":
        shutil.copytree(run_dir, tmp_path / "run")
        damaged = tmp_path / "run" / "final"
    else:
        shutil.copytree(dataset, tmp_path / "data")
        damaged = tmp_path / "data" / ("tokenizer" if artifact == "tokenizer" else "")
    expected = CORRUPTIONS[corruption](damaged, DATA_FILE[artifact])
    out = tmp_path / "out"
    before = snapshot(tmp_path)

    if consumer == "verify":
        args = ["verify", str(damaged)]
    elif consumer == "preprocess --tokenizer":
        args = ["preprocess", str(text_corpus), "--tokenizer", str(damaged), "--out", str(out), "--workers", "1"]
    elif consumer == "pretrain":
        args = ["pretrain", str(damaged), "--out", str(out), "--max-steps", "2", *TRAIN]
    elif consumer == "pretrain --init-from":
        args = ["pretrain", str(dataset), "--init-from", str(damaged), "--out", str(out), "--max-steps", "2", *TRAIN]
    else:
        args = ["pretrain", str(dataset), "--out", str(damaged.parent), "--resume", "--max-steps", "4", *TRAIN]
        if corruption == "no-manifest":
            # A directory without a manifest is not a checkpoint (lmkit's atomic writer never leaves one):
            # --resume finds no checkpoint in the run and says so, naming the run directory.
            expected = f"{damaged.parent}: no checkpoint to resume from"
    result = runner.invoke(app, args)

    assert result.exit_code == 1, result.output
    assert expected in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert snapshot(tmp_path) == before  # no output, no lock, no temporary; the damaged run is untouched
