"""Manifests: what an artifact is, its content address, and verification on load.

An artifact is a directory of files plus ``manifest.json`` (written last). Loading checks the
format version, the manifest's own checksum, every file's size and sha256, and that every
listed path stays inside the directory without following links.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit import __version__
from lmkit.errors import ArtifactError, UserError

MANIFEST = "manifest.json"
MANIFEST_FIELDS = ("kind", "format_version", "id", "recipe", "config", "inputs", "files", "stats",
                   "lmkit_version", "created_at", "checksum")

# kind -> (format version this lmkit writes by default, the command that makes it)
KINDS: dict[str, tuple[int, str]] = {}
# kind -> every format version this lmkit reads. A later version is written only by artifacts that need it (what
# an older lmkit would misread), so that it refuses them by version instead of misreading them.
READS: dict[str, tuple[int, ...]] = {}


def register_kind(kind: str, format_version: int, made_by: str, reads: tuple[int, ...] | None = None) -> None:
    if kind in KINDS:
        raise ValueError(f"artifact kind {kind!r} registered twice")
    KINDS[kind] = (format_version, made_by)
    READS[kind] = reads or (format_version,)


# tokenizer 2: tokens added after a SentencePiece vocabulary (added_tokens.json: lmkit's chat tokens)
register_kind("tokenizer", 1, "lmkit preprocess or lmkit import", reads=(1, 2))
register_kind("dataset", 1, "lmkit preprocess")
# checkpoint 2: a chat model (model.json "chat": its template, read by lmkit chat, generate and serve)
register_kind("checkpoint", 1, "lmkit pretrain, lmkit finetune or lmkit import", reads=(1, 2))
register_kind("report", 1, "lmkit evaluate")
register_kind("export", 1, "lmkit export")
register_kind("embeddings", 1, "lmkit inspect embed")

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_json(obj: Any) -> str:
    """A stable sha256 over a JSON-able value (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate (a JSON escape in a hostile manifest) hashes instead of crashing;
    # every valid string encodes exactly as before.
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def describe_file(path: str | Path) -> dict[str, Any]:
    """Lineage record of a raw input file: path, size and content hash."""
    p = Path(path)
    try:
        return {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": sha256_file(p)}
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None


def make_recipe(kind: str, config: dict[str, Any], input_files: list[dict[str, Any]],
                parents: list[dict[str, Any]]) -> str:
    """What a stage's result depends on: kind, format, the output-affecting config and the
    contents (not names) of its inputs. Equal recipes mean the stage has nothing to do."""
    return digest_json({
        "kind": kind,
        "format_version": KINDS[kind][0],
        "config": config,
        # Content and how it is read (the suffix picks the format): not where it lies.
        "inputs": [(f.get("role"), "".join(Path(f["path"]).suffixes[-2:]), f["sha256"]) for f in input_files],
        "parents": [(p["role"], p["id"]) for p in parents],
    })


@dataclass
class Artifact:
    """A verified artifact directory and its manifest."""

    path: Path
    manifest: dict[str, Any]
    up_to_date: bool = False  # True when a stage found this artifact already made from the same recipe

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def id(self) -> str:
        return self.manifest["id"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest["config"]

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest["stats"]

    @property
    def parents(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"].get("artifacts", [])

    def file(self, name: str) -> Path:
        if name not in self.manifest["files"]:
            raise ArtifactError(f"{self.path}: the manifest lists no file '{name}'")
        return self.path / name

    def parent_path(self, role: str) -> Path:
        for parent in self.parents:
            if parent["role"] == role:
                return (self.path / parent["path"]).resolve()
        raise ArtifactError(f"{self.path}: no parent artifact with role '{role}'")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and structurally check ``PATH/manifest.json`` (no file hashing)."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such artifact directory")
    if not path.is_dir():
        raise ArtifactError(f"{path}: not a directory; an artifact is a directory with a {MANIFEST}")
    manifest_path = path / MANIFEST
    if manifest_path.is_symlink():
        raise ArtifactError(f"{manifest_path}: is a symbolic link; refusing to follow it")
    if not manifest_path.is_file():
        inside = sorted(p.name for p in path.iterdir() if (p / MANIFEST).is_file())
        if inside:  # e.g. a pretraining run directory, which holds checkpoint artifacts
            shown = ", ".join(inside[:4]) + (", ..." if len(inside) > 4 else "")
            raise ArtifactError(f"{path}: not an lmkit artifact (no {MANIFEST}), but it holds artifacts: {shown} "
                                f"(e.g. {path / inside[-1]})")
        raise ArtifactError(f"{path}: not an lmkit artifact (no {MANIFEST}); "
                            "it may be incomplete or made by another tool")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: invalid manifest ({exc})") from None
    except RecursionError:
        raise ArtifactError(f"{manifest_path}: invalid manifest (nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path}: invalid manifest (not a JSON object)")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise ArtifactError(f"{manifest_path}: invalid manifest (missing {', '.join(missing)})")
    kind = manifest["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ArtifactError(f"{manifest_path}: unknown artifact kind {kind!r}")
    made_by, versions = KINDS[kind][1], READS[kind]
    if manifest["format_version"] not in versions:
        read = f"version {versions[0]}" if len(versions) == 1 else f"versions {', '.join(map(str, versions))}"
        raise ArtifactError(
            f"{manifest_path}: {kind} format version {manifest['format_version']!r} is not supported "
            f"by lmkit {__version__} (reads {read}); remake it with `{made_by}`")
    problem = _shape_problem(manifest)
    if problem:
        raise ArtifactError(f"{manifest_path}: invalid manifest ({problem})")
    return manifest


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    """What is structurally wrong with a manifest, so later code can index it safely."""
    for key, kind in (("config", dict), ("stats", dict), ("inputs", dict), ("files", dict), ("id", str),
                      ("recipe", str), ("checksum", str)):
        if not isinstance(manifest[key], kind):
            return f"{key} is not a {kind.__name__}"
    for name, entry in manifest["files"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int)
                and isinstance(entry.get("sha256"), str)):
            return f"files entry {name!r} needs an integer size and a sha256"
    parents = manifest["inputs"].get("artifacts", [])
    raw = manifest["inputs"].get("files", [])
    if not isinstance(parents, list) or not all(
            isinstance(p, dict) and all(isinstance(p.get(k), str) for k in ("role", "path", "id")) for p in parents):
        return "inputs.artifacts entries need role, path and id"
    if not isinstance(raw, list) or not all(
            isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("size"), int)
            and isinstance(f.get("sha256"), str) for f in raw):
        return "inputs.files entries need path, size and sha256"
    return None


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 over every other field: any edit of the manifest, not only of the files, shows."""
    return digest_json({key: value for key, value in manifest.items() if key != "checksum"})


def _safe_member(root: Path, name: str) -> Path:
    """The path of a manifest-listed file, refusing names that escape the directory."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name \
            or any(part in ("", ".", "..") for part in name.split("/")):
        raise ArtifactError(f"{root / MANIFEST}: unsafe file name {name!r} in manifest")
    current = root
    for part in name.split("/"):
        current = current / part
        if current.is_symlink():
            raise ArtifactError(f"{current}: is a symbolic link; artifacts never contain links")
    return current


def verify_files(path: str | Path, manifest: dict[str, Any], full: bool = True) -> list[str]:
    """Every problem with the listed files, one line each naming the file."""
    root = Path(path)
    problems = []
    for name, entry in sorted(manifest["files"].items()):
        try:
            member = _safe_member(root, name)
        except ArtifactError as exc:
            problems.append(str(exc))
            continue
        if not member.is_file():
            problems.append(f"{member}: missing")
            continue
        size = member.stat().st_size
        if not isinstance(entry, dict) or size != entry.get("size"):
            problems.append(f"{member}: size {size} bytes, manifest says "
                            f"{entry.get('size') if isinstance(entry, dict) else '?'}")
            continue
        if full and sha256_file(member) != entry.get("sha256"):
            problems.append(f"{member}: content changed (sha256 mismatch)")
    expected_id = artifact_id(manifest["kind"], manifest["files"], manifest["recipe"], root)
    if manifest["id"] != expected_id:
        problems.append(f"{root / MANIFEST}: id does not match its contents (edited manifest?)")
    elif manifest["checksum"] != manifest_checksum(manifest):
        problems.append(f"{root / MANIFEST}: checksum does not match (the manifest was edited)")
    return problems


def verify_tree(path: str | Path) -> tuple[list[str], list[str]]:
    """(descriptions of verified artifacts, problems) for PATH and every artifact nested in it.

    Nested artifacts are found among the listed files (``sub/manifest.json``), only at safe
    names, so a hostile manifest cannot send verification outside the directory.
    """
    path = Path(path)
    try:
        manifest = read_manifest(path)
    except ArtifactError as exc:
        return [], [str(exc)]
    problems = verify_files(path, manifest, full=True)
    n = len(manifest["files"])
    checked = [f"{path} ({manifest['kind']} {manifest['id'][:12]}, {n} file{'s' if n != 1 else ''})"]
    for name in sorted(manifest["files"]):
        if not name.endswith("/" + MANIFEST):
            continue
        try:
            nested = _safe_member(path, name).parent
        except ArtifactError:
            continue  # already reported by verify_files
        sub_checked, sub_problems = verify_tree(nested)
        checked += sub_checked
        problems += sub_problems
    return checked, problems


def artifact_id(kind: str, files: dict[str, Any], recipe: str, root: Path) -> str:
    """Content address: a hash over kind, the files' hashes and the recipe (which covers the
    output-affecting config and the inputs' contents).

    A nested artifact's manifest (``tokenizer/manifest.json``) counts by its id, not its bytes:
    its creation time must not change the id of the artifact that contains it.
    """
    hashes = {}
    for name, entry in files.items():
        hashes[name] = entry.get("sha256") if isinstance(entry, dict) else None
        if name.endswith("/" + MANIFEST):
            try:
                nested = _safe_member(root, name)  # never read outside the artifact
                hashes[name] = json.loads(nested.read_text(encoding="utf-8")).get("id")
            except (ArtifactError, OSError, ValueError, AttributeError):
                pass  # verify_files reports the damaged or unsafe file itself
    return digest_json({"kind": kind, "files": hashes, "recipe": recipe})[:32]


def load(path: str | Path, kind: str | None = None, full: bool = True) -> Artifact:
    """Load and verify an artifact; any problem is an ArtifactError naming the file."""
    path = Path(path)
    manifest = read_manifest(path)
    if kind is not None and manifest["kind"] != kind:
        made_by = KINDS.get(kind, (0, "lmkit"))[1]
        raise ArtifactError(f"{path}: is a {manifest['kind']} artifact, expected a {kind} "
                            f"(made by `{made_by}`)")
    problems = verify_files(path, manifest, full=full)
    if problems:
        raise ArtifactError(problems[0] + (f" (and {len(problems) - 1} more problems; "
                                           f"run `lmkit verify {path}`)" if len(problems) > 1 else ""))
    return Artifact(path=path, manifest=manifest)


def lineage(path: str | Path, _seen: frozenset = frozenset()) -> dict[str, Any]:
    """The tree of an artifact's parents back to raw input files, as nested dicts: each node has its
    path, kind, id, creation time, config and stats, its parents (with their role) and raw input files."""
    path = Path(path).resolve()
    try:
        manifest = read_manifest(path)
    except ArtifactError as exc:
        return {"path": str(path), "error": str(exc)}
    node: dict[str, Any] = {"path": str(path), "kind": manifest["kind"], "id": manifest["id"],
                            "created_at": manifest["created_at"], "config": manifest["config"],
                            "stats": manifest["stats"], "parents": [], "files": manifest["inputs"].get("files", [])}
    if path in _seen:
        return node
    for parent in manifest["inputs"].get("artifacts", []):
        parent_path = (path / parent["path"]).resolve()
        child = lineage(parent_path, _seen | {path})
        child["role"] = parent["role"]
        if child.get("id") not in (None, parent["id"]):
            child["error"] = f"changed since: expected id {parent['id'][:12]}, found {child['id'][:12]}"
        node["parents"].append(child)
    return node


def describe_parent(role: str, parent: Artifact, child_dir: Path) -> dict[str, Any]:
    """Lineage record of a parent artifact, its path relative to the child directory."""
    return {"role": role, "path": os.path.relpath(parent.path.resolve(), child_dir.resolve()), "id": parent.id}
