import json
import os
import subprocess
import sys

import pytest

from lmkit import artifacts
from lmkit.artifacts import ArtifactWriter
from lmkit.errors import ArtifactError, UserError

RECIPE = artifacts.make_recipe("tokenizer", {"a": 1}, [], [])


def make(out, recipe=RECIPE, content=b"hello", force=False):
    with ArtifactWriter(out, "tokenizer", recipe, force=force) as writer:
        if writer.up_to_date:
            return writer.existing
        (writer.tmp / "tokenizer.model").write_bytes(content)
        (writer.tmp / "sub").mkdir()
        (writer.tmp / "sub" / "x.json").write_text("{}")
        return writer.commit({"a": 1}, {"artifacts": [], "files": []}, {"n": 1})


def test_commit_then_load(tmp_path):
    art = make(tmp_path / "tok")
    loaded = artifacts.load(tmp_path / "tok", kind="tokenizer")
    assert loaded.id == art.id and len(art.id) == 32
    assert set(loaded.manifest["files"]) == {"tokenizer.model", "sub/x.json"}
    assert loaded.manifest["files"]["tokenizer.model"]["size"] == 5
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tok.tmp")] == []


def test_same_recipe_is_up_to_date_and_touches_manifest(tmp_path):
    make(tmp_path / "tok")
    manifest = tmp_path / "tok" / "manifest.json"
    os.utime(manifest, (1, 1))
    again = make(tmp_path / "tok", content=b"other")
    assert again.up_to_date and (tmp_path / "tok" / "tokenizer.model").read_bytes() == b"hello"
    assert manifest.stat().st_mtime > 1


def test_different_recipe_refused_then_forced(tmp_path):
    make(tmp_path / "tok")
    other = artifacts.make_recipe("tokenizer", {"a": 2}, [], [])
    with pytest.raises(UserError, match="already holds a different tokenizer artifact.*--force"):
        make(tmp_path / "tok", recipe=other, content=b"new")
    assert (tmp_path / "tok" / "tokenizer.model").read_bytes() == b"hello"
    make(tmp_path / "tok", recipe=other, content=b"new", force=True)
    assert artifacts.load(tmp_path / "tok").manifest["recipe"] == other
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name or ".tmp-" in p.name]


def test_failure_inside_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ArtifactWriter(tmp_path / "tok", "tokenizer", RECIPE) as writer:
            (writer.tmp / "half").write_bytes(b"x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tok.lock"]


def test_output_that_is_a_file_or_foreign_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is a file"):
        make(tmp_path / "file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not an lmkit artifact; refusing"):
        make(tmp_path / "mine", force=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_second_writer_is_refused(tmp_path):
    with ArtifactWriter(tmp_path / "tok", "tokenizer", RECIPE):
        with pytest.raises(UserError, match="another lmkit process is writing"):
            with ArtifactWriter(tmp_path / "tok", "tokenizer", RECIPE):
                pass


def test_stale_temporaries_cleaned_and_old_restored(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".tok.tmp-{dead}-abcd"
    stale.mkdir()
    (stale / "junk").write_text("x")
    make(tmp_path / "tok")
    assert not stale.exists()
    # a crash between the two renames of a --force commit: the old artifact sits aside
    (tmp_path / "tok").rename(tmp_path / f".tok.old-{dead}-abcd")
    with pytest.raises(UserError, match="already holds a different"):
        make(tmp_path / "tok", recipe=artifacts.make_recipe("tokenizer", {"a": 3}, [], []))
    assert artifacts.load(tmp_path / "tok").manifest["recipe"] == RECIPE


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / "tokenizer.model").write_bytes(b"hellO"), "content changed"),
    (lambda d: (d / "tokenizer.model").write_bytes(b"hell"), "size 4 bytes, manifest says 5"),
    (lambda d: (d / "sub" / "x.json").unlink(), "x.json: missing"),
    (lambda d: (d / "manifest.json").unlink(), "not an lmkit artifact"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "invalid manifest"),
])
def test_tampering_detected(tmp_path, damage, message):
    make(tmp_path / "tok")
    damage(tmp_path / "tok")
    with pytest.raises(ArtifactError, match=message):
        artifacts.load(tmp_path / "tok")


def edit_manifest(directory, change):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("change,message", [
    (lambda m: m.update(format_version=99), "format version 99 is not supported.*lmkit preprocess"),
    (lambda m: m.update(kind="spaceship"), "unknown artifact kind"),
    (lambda m: m["stats"].update(n=2) or m.update(id="0" * 32), "id does not match"),
    (lambda m: m["files"].update({"../escape": {"size": 1, "sha256": "x"}}), "unsafe file name '../escape'"),
    (lambda m: m["files"].update({"/etc/passwd": {"size": 1, "sha256": "x"}}), "unsafe file name '/etc/passwd'"),
    (lambda m: m.pop("files"), "missing files"),
])
def test_edited_manifest_detected(tmp_path, change, message):
    make(tmp_path / "tok")
    edit_manifest(tmp_path / "tok", change)
    with pytest.raises(ArtifactError, match=message):
        artifacts.load(tmp_path / "tok")


def test_symlink_member_refused(tmp_path):
    make(tmp_path / "tok")
    (tmp_path / "outside").write_bytes(b"hello")
    model = tmp_path / "tok" / "tokenizer.model"
    model.unlink()
    model.symlink_to(tmp_path / "outside")
    with pytest.raises(ArtifactError, match="symbolic link"):
        artifacts.load(tmp_path / "tok")


def test_wrong_kind(tmp_path):
    make(tmp_path / "tok")
    with pytest.raises(ArtifactError, match="is a tokenizer artifact, expected a dataset"):
        artifacts.load(tmp_path / "tok", kind="dataset")


def test_recipe_depends_on_content_not_names():
    a = artifacts.make_recipe("dataset", {"x": 1}, [{"path": "/a", "sha256": "1", "role": "train"}], [])
    b = artifacts.make_recipe("dataset", {"x": 1}, [{"path": "/b", "sha256": "1", "role": "train"}], [])
    c = artifacts.make_recipe("dataset", {"x": 1}, [{"path": "/a", "sha256": "2", "role": "train"}], [])
    assert a == b != c


def test_kind_registered_twice_is_a_bug():
    with pytest.raises(ValueError, match="registered twice"):
        artifacts.register_kind("dataset", 1, "x")


def test_nested_manifest_time_does_not_change_the_id(tmp_path):
    def build(out):
        with ArtifactWriter(out, "dataset", RECIPE) as writer:
            nested = writer.tmp / "tokenizer"
            nested.mkdir()
            (nested / "tokenizer.model").write_bytes(b"model")
            artifacts.seal(nested, "tokenizer", RECIPE, {}, {"artifacts": [], "files": []}, {})
            edit_manifest(nested, lambda m: m.update(created_at=str(out)))  # as if made at another time
            return writer.commit({}, {"artifacts": [], "files": []}, {})

    a, b = build(tmp_path / "a"), build(tmp_path / "b")
    assert a.manifest["files"]["tokenizer/manifest.json"] != b.manifest["files"]["tokenizer/manifest.json"]
    assert a.id == b.id
    artifacts.load(tmp_path / "a")


def test_nested_manifest_outside_the_artifact_is_never_read(tmp_path, monkeypatch):
    make(tmp_path / "tok")
    edit_manifest(tmp_path / "tok", lambda m: m["files"].update({"../x/manifest.json": {"size": 1, "sha256": "x"}}))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text('{"id": "outside"}')
    opened = []
    real_read_text = type(tmp_path).read_text
    monkeypatch.setattr(type(tmp_path), "read_text",
                        lambda self, *a, **k: opened.append(self) or real_read_text(self, *a, **k))
    with pytest.raises(ArtifactError, match="unsafe file name"):
        artifacts.load(tmp_path / "tok")
    assert tmp_path / "x" / "manifest.json" not in [p.resolve() for p in opened]


def test_config_or_stats_edit_alone_is_detected(tmp_path):
    make(tmp_path / "tok")
    edit_manifest(tmp_path / "tok", lambda m: m["config"].update(a=2))
    with pytest.raises(ArtifactError, match="checksum does not match"):
        artifacts.load(tmp_path / "tok")


@pytest.mark.parametrize("change,message", [
    (lambda m: m["inputs"].update(artifacts=[{"role": "tokenizer"}]), "inputs.artifacts entries need"),
    (lambda m: m["files"].update({"x": "not a dict"}), "files entry 'x' needs"),
    (lambda m: m.update(stats=[]), "stats is not a dict"),
])
def test_malformed_manifest_shapes_are_clear_errors(tmp_path, change, message):
    make(tmp_path / "tok")
    edit_manifest(tmp_path / "tok", change)
    with pytest.raises(ArtifactError, match=message):
        artifacts.read_manifest(tmp_path / "tok")


def test_verify_tree_never_leaves_the_artifact(tmp_path):
    make(tmp_path / "tok")
    (tmp_path / "x").mkdir()
    make(tmp_path / "x" / "inner")  # a valid artifact outside, which must not be visited
    edit_manifest(tmp_path / "tok", lambda m: m["files"].update(
        {"../x/inner/manifest.json": {"size": 1, "sha256": "x"}}))
    checked, problems = artifacts.verify_tree(tmp_path / "tok")
    assert not any("inner" in line for line in checked)
    assert any("unsafe file name" in p for p in problems)


def test_failed_force_commit_keeps_the_old_artifact(tmp_path, monkeypatch):
    make(tmp_path / "tok")
    other = artifacts.make_recipe("tokenizer", {"a": 9}, [], [])
    real_rename = type(tmp_path).rename

    def rename(self, target):
        if ".tmp-" in self.name:  # the second rename: the new artifact into place
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(type(tmp_path), "rename", rename)
    with pytest.raises(OSError):
        make(tmp_path / "tok", recipe=other, content=b"new", force=True)
    monkeypatch.undo()
    assert artifacts.load(tmp_path / "tok").manifest["recipe"] == RECIPE
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tok.lock", "tok"]


def test_unreadable_input_is_a_user_error(tmp_path, monkeypatch):
    from lmkit.artifacts import manifest

    def denied(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(manifest, "sha256_file", denied)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UserError, match=r"a.txt: cannot read \(Permission denied\)"):
        artifacts.describe_file(tmp_path / "a.txt")


def test_a_directory_holding_artifacts_says_so(tmp_path):
    make(tmp_path / "run" / "final")
    with pytest.raises(ArtifactError, match=r"run: not an lmkit artifact \(no manifest.json\), but it holds "
                                            r"artifacts: final \(e.g. .*run/final\)"):
        artifacts.read_manifest(tmp_path / "run")
