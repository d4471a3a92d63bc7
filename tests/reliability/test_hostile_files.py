"""Hostile files: artifacts whose manifest was recomputed to vouch for a malicious file, and manifests or
links that lead outside the artifact. Each is refused with an lmkit error, runs no code, allocates nothing
large and reads nothing outside the artifact.

Refused: 28 hostile files. 4 pickles in place of safetensors (3 model weights, read by
`Checkpoint.build_model` and `pretrain --init-from`; 1 optimizer state, read by `pretrain --resume`);
10 model weights whose safetensors header lies; 14 escapes (7 per artifact, for a dataset and a
checkpoint: 4 file names leaving the directory, a linked file, a linked directory, a linked manifest).
"""

import hashlib
import io
import json
import os
import pickle
import resource
import shutil
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lmkit import artifacts
from lmkit.artifacts import MANIFEST, artifact_id, manifest_checksum
from lmkit.checkpoint import MODEL_FILE, OPTIMIZER_FILE, read_checkpoint
from lmkit.cli import app
from lmkit.errors import ArtifactError
from tests.conftest import train_tiny

runner = CliRunner()

TRAIN = ["--seq-len", "32", "--micro-batch", "4", "--eval-every", "0", "--checkpoint-every", "0",
         "--precision", "fp32", "--threads", "1"]


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory):
    """A tiny pretraining run whose only checkpoint is final/."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    train_tiny(dataset, out)
    return out


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reseal(directory, extra_files=None):
    """Make the manifest vouch for the files as they are now (sizes, hashes, id, checksum), as an attacker
    who rewrites the whole artifact can; ``extra_files`` adds entries as given."""
    manifest = json.loads((directory / MANIFEST).read_text())
    for name, entry in manifest["files"].items():
        path = directory / name
        if path.is_file() and not path.is_symlink():
            entry.update(size=path.stat().st_size, sha256=sha256(path))
    manifest["files"].update(extra_files or {})
    manifest["id"] = artifact_id(manifest["kind"], manifest["files"], manifest["recipe"], directory)
    manifest["checksum"] = manifest_checksum(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


# -- pickles in place of safetensors -----------------------------------------------------------------
class RunsShell:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class OpensFile:
    """Unpickling this creates ``marker`` with open()."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def torch_save_bytes(obj):
    buffer = io.BytesIO()
    torch.save({"weights": obj}, buffer)  # a .pt file: a zip holding the pickle
    return buffer.getvalue()


PICKLES = {
    "pickle-os-system": lambda marker: pickle.dumps(RunsShell(marker)),
    "pickle-open": lambda marker: pickle.dumps(OpensFile(marker), protocol=2),
    "torch-save-pt": lambda marker: torch_save_bytes(RunsShell(marker)),
}


def test_payloads_do_run_when_unpickled(tmp_path):
    """The payloads are live: unpickling them the way torch.load(weights_only=False) would creates the marker."""
    for name, make in PICKLES.items():
        marker = tmp_path / name
        data = make(marker)
        if name == "torch-save-pt":
            torch.load(io.BytesIO(data), weights_only=False)
        else:
            pickle.loads(data)
        assert marker.exists(), name


@pytest.fixture
def checkpoint(run_dir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    return target / "final"


@pytest.mark.parametrize("payload", PICKLES)
def test_pickled_weights_with_a_valid_manifest_are_refused_unexecuted(checkpoint, dataset, tmp_path, payload):
    marker = tmp_path / "pwned"
    (checkpoint / MODEL_FILE).write_bytes(PICKLES[payload](marker))
    reseal(checkpoint)
    assert runner.invoke(app, ["verify", str(checkpoint)]).exit_code == 0  # the manifest vouches for it

    with pytest.raises(ArtifactError, match=f"{checkpoint / MODEL_FILE}: not a valid safetensors file"):
        read_checkpoint(checkpoint).build_model()
    result = runner.invoke(app, ["pretrain", str(dataset), "--init-from", str(checkpoint), "--out",
                                 str(tmp_path / "child"), "--max-steps", "2", *TRAIN])
    assert result.exit_code == 1 and f"error: {checkpoint / MODEL_FILE}: not a valid safetensors" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "child" / "final").exists()


def test_pickled_optimizer_state_is_refused_on_resume(checkpoint, dataset, tmp_path):
    marker = tmp_path / "pwned"
    (checkpoint / OPTIMIZER_FILE).write_bytes(pickle.dumps(RunsShell(marker)))
    reseal(checkpoint)
    final_before = {p: p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()}
    result = runner.invoke(app, ["pretrain", str(dataset), "--out", str(checkpoint.parent), "--resume",
                                 "--max-steps", "4", *TRAIN])
    assert result.exit_code == 1, result.output
    assert f"error: {checkpoint / OPTIMIZER_FILE}: not a valid safetensors file" in result.stderr
    assert not marker.exists()
    assert {p: p.read_bytes() for p in checkpoint.rglob("*") if p.is_file()} == final_before
    assert sorted(p.name for p in checkpoint.parent.iterdir() if p.is_dir()) == ["final"]


# -- safetensors headers that lie --------------------------------------------------------------------
def split_safetensors(data):
    length = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8: 8 + length]), data[8 + length:]


def join_safetensors(header, body):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def edit_first_tensor(data, **changes):
    header, body = split_safetensors(data)
    first = next(name for name in header if name != "__metadata__")
    header[first].update(changes)
    return join_safetensors(header, body)


def second_uses_first_bytes(data):
    header, body = split_safetensors(data)
    first, second = [name for name in header if name != "__metadata__"][:2]
    header[second]["data_offsets"] = header[first]["data_offsets"]
    return join_safetensors(header, body)


def flattened_first(data):
    """A consistent file (shape x dtype = byte span) whose first tensor is not the shape the model has."""
    header, body = split_safetensors(data)
    first = next(name for name in header if name != "__metadata__")
    header[first]["shape"] = [header[first]["shape"][0] * header[first]["shape"][1]]
    return join_safetensors(header, body)


LIES = {
    "header-length-2**60": (lambda d: struct.pack("<Q", 2**60) + d[8:], "header too large"),
    "header-not-json": (lambda d: struct.pack("<Q", len(d) - 8) + b"#" * (len(d) - 8), "invalid JSON"),
    "header-not-an-object": (lambda d: join_safetensors([1, 2], split_safetensors(d)[1]), "invalid JSON"),
    "empty-file": (lambda d: b"", "header too small"),
    "offsets-past-the-end": (lambda d: edit_first_tensor(d, data_offsets=[0, 2**40]), "invalid"),
    "shape-claims-4-TiB": (lambda d: edit_first_tensor(d, shape=[2**20, 2**20]), "invalid"),
    "dtype-claims-f64": (lambda d: edit_first_tensor(d, dtype="F64"), "invalid"),
    "overlapping-offsets": (second_uses_first_bytes, "invalid"),  # safetensors words it two ways
    "data-cut-short": (lambda d: join_safetensors(*split_safetensors(d))[:-4], "not fully covered"),
    "shape-not-the-models": (flattened_first, "weights do not match model.json (size mismatch for"),
}


@pytest.mark.parametrize("lie", LIES)
def test_lying_safetensors_header_is_refused_without_a_large_allocation(checkpoint, lie):
    make, message = LIES[lie]
    weights = checkpoint / MODEL_FILE
    weights.write_bytes(make(weights.read_bytes()))
    reseal(checkpoint)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ArtifactError) as info:
        read_checkpoint(checkpoint).build_model()
    assert str(info.value).startswith(f"{weights}: ") and message in str(info.value)
    # What the header claims (up to 2**60 bytes) was never allocated: the process peak barely moved.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 64 * 1024


# -- escapes: names and links leading outside the artifact -------------------------------------------
_opened: list[str] | None = None


def _record_opens(event, args):
    if event == "open" and _opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.fsdecode(args[0]))


# An audit hook sees every open() of the process (builtins.open, io.open, Path.read_text, os.open),
# which monkeypatching one of them would not. Hooks cannot be removed; this one records only while asked.
sys.addaudithook(_record_opens)


@contextmanager
def recording_opens():
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


def outside(paths, root):
    """The paths that, links followed, are not inside ``root``."""
    root = os.path.realpath(root)
    return [p for p in paths if os.path.commonpath([os.path.realpath(p), root]) != root]


def escape_by_name(name_of):
    """Add a manifest entry (with the true size and sha256 of the outside file) at ``name_of(target)``."""
    def damage(art, data_file, secret):
        target = secret.parent / "manifest.json" if name_of(secret).endswith(MANIFEST) else secret
        name = name_of(secret)
        reseal(art, {name: {"size": target.stat().st_size, "sha256": sha256(target)}})
        return f"{art / MANIFEST}: unsafe file name {name!r} in manifest"
    return damage


def linked_file(art, data_file, secret):
    """The data file becomes a link to an identical copy outside: sizes and hashes would all match."""
    shutil.copy(art / data_file, secret.parent / data_file)
    (art / data_file).unlink()
    (art / data_file).symlink_to(secret.parent / data_file)
    return f"{art / data_file}: is a symbolic link; artifacts never contain links"


def linked_directory(art, data_file, secret):
    shutil.copytree(art / "tokenizer", secret.parent / "tokenizer")
    shutil.rmtree(art / "tokenizer")
    (art / "tokenizer").symlink_to(secret.parent / "tokenizer", target_is_directory=True)
    return f"{art / 'tokenizer'}: is a symbolic link; artifacts never contain links"


def linked_manifest(art, data_file, secret):
    shutil.copy(art / MANIFEST, secret.parent / MANIFEST)
    (art / MANIFEST).unlink()
    (art / MANIFEST).symlink_to(secret.parent / MANIFEST)
    return f"{art / MANIFEST}: is a symbolic link; refusing to follow it"


ESCAPES = {
    "dot-dot": escape_by_name(lambda secret: f"../{secret.parent.name}/{secret.name}"),
    "absolute": escape_by_name(lambda secret: str(secret)),
    "etc-passwd": escape_by_name(lambda secret: "/etc/passwd"),
    "nested-dot-dot-manifest": escape_by_name(lambda secret: f"tokenizer/../../{secret.parent.name}/{MANIFEST}"),
    "linked-file": linked_file,
    "linked-directory": linked_directory,
    "linked-manifest": linked_manifest,
}
ESCAPE_CASES = [(kind, escape) for kind in ("dataset", "checkpoint") for escape in ESCAPES]
assert len(ESCAPE_CASES) == 14


@pytest.mark.parametrize("kind,escape", ESCAPE_CASES, ids=[f"{k}-{e}" for k, e in ESCAPE_CASES])
def test_escaping_names_and_links_are_refused_and_nothing_outside_is_read(kind, escape, dataset, run_dir, tmp_path):
    if escape == "etc-passwd" and not os.access("/etc/passwd", os.R_OK):
        pytest.skip("no readable /etc/passwd")
    art = tmp_path / "art"
    shutil.copytree(dataset if kind == "dataset" else run_dir / "final", art)
    (tmp_path / "outside").mkdir()
    secret = tmp_path / "outside" / "secret.bin"
    secret.write_bytes(b"not yours\n")
    (tmp_path / "outside" / MANIFEST).write_text((art / "tokenizer" / MANIFEST).read_text())
    data_file = "train-00000.arrow" if kind == "dataset" else MODEL_FILE
    expected = ESCAPES[escape](art, data_file, secret)

    with recording_opens() as opened:
        with pytest.raises(ArtifactError) as info:
            artifacts.load(art)
        result = runner.invoke(app, ["verify", str(art)])
    assert expected in str(info.value)
    assert result.exit_code == 1 and f"error: {expected}" in result.stderr
    assert outside(opened, art) == []  # nothing outside the artifact was opened, links followed
    assert escape == "linked-manifest" or str(art / MANIFEST) in opened  # (only its own manifest, refused early)


def test_the_open_recorder_sees_reads_through_links(tmp_path):
    """The control for the test above: a read through a link to a file outside is caught."""
    (tmp_path / "outside").write_text("secret")
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "link").symlink_to(tmp_path / "outside")
    with recording_opens() as opened:
        (tmp_path / "art" / "link").read_text()
        os.close(os.open(tmp_path / "art" / "link", os.O_RDONLY))
    assert outside(opened, tmp_path / "art") == [str(tmp_path / "art" / "link")] * 2
