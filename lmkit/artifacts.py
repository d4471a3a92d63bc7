"""Artifacts: the one contract between stages (see ARCHITECTURE.md).

An artifact is a directory holding files and a ``manifest.json`` written last. This module
writes them atomically (temporary sibling, fsync, rename), verifies them on load (format
version, sizes, sha256, paths confined to the directory), and decides whether a stage's
output is already up to date (same recipe) or would overwrite something different.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lmkit import __version__
from lmkit.errors import ArtifactError, UserError

MANIFEST = "manifest.json"
MANIFEST_FIELDS = ("kind", "format_version", "id", "recipe", "config", "inputs", "files", "stats",
                   "lmkit_version", "created_at")

# kind -> (format version this lmkit reads and writes, the command that makes it)
KINDS: dict[str, tuple[int, str]] = {}


def register_kind(kind: str, format_version: int, made_by: str) -> None:
    if kind in KINDS:
        raise ValueError(f"artifact kind {kind!r} registered twice")
    KINDS[kind] = (format_version, made_by)


register_kind("tokenizer", 1, "lmkit preprocess")
register_kind("dataset", 1, "lmkit preprocess")

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
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_file(path: str | Path) -> dict[str, Any]:
    """Lineage record of a raw input file: path, size and content hash."""
    p = Path(path)
    return {"path": str(p.resolve()), "size": p.stat().st_size, "sha256": sha256_file(p)}


def make_recipe(kind: str, config: dict[str, Any], input_files: list[dict[str, Any]],
                parents: list[dict[str, Any]]) -> str:
    """What a stage's result depends on: kind, format, the output-affecting config and the
    contents (not names) of its inputs. Equal recipes mean the stage has nothing to do."""
    return digest_json({
        "kind": kind,
        "format_version": KINDS[kind][0],
        "config": config,
        "inputs": [(f.get("role"), f["sha256"]) for f in input_files],
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
        raise ArtifactError(f"{path}: not an lmkit artifact (no {MANIFEST}); "
                            "it may be incomplete or made by another tool")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: invalid manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{manifest_path}: invalid manifest (not a JSON object)")
    missing = [k for k in MANIFEST_FIELDS if k not in manifest]
    if missing:
        raise ArtifactError(f"{manifest_path}: invalid manifest (missing {', '.join(missing)})")
    kind = manifest["kind"]
    if kind not in KINDS:
        raise ArtifactError(f"{manifest_path}: unknown artifact kind {kind!r}")
    version, made_by = KINDS[kind]
    if manifest["format_version"] != version:
        raise ArtifactError(
            f"{manifest_path}: {kind} format version {manifest['format_version']!r} is not supported "
            f"by lmkit {__version__} (reads version {version}); remake it with `{made_by}`")
    if not isinstance(manifest["files"], dict) or not isinstance(manifest["inputs"], dict):
        raise ArtifactError(f"{manifest_path}: invalid manifest (files/inputs malformed)")
    return manifest


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
            problems.append(f"{member}: size {size} bytes, manifest says {entry.get('size') if isinstance(entry, dict) else '?'}")
            continue
        if full and sha256_file(member) != entry.get("sha256"):
            problems.append(f"{member}: content changed (sha256 mismatch)")
    expected_id = artifact_id(manifest["kind"], manifest["files"], manifest["recipe"], root)
    if manifest["id"] != expected_id:
        problems.append(f"{root / MANIFEST}: id does not match its contents (edited manifest?)")
    return problems


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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArtifactWriter:
    """Build an artifact in a temporary sibling directory and commit it atomically.

    Usage::

        with ArtifactWriter(out, "dataset", recipe, force=False) as writer:
            if writer.up_to_date: return writer.existing
            ... write files under writer.tmp ...
            artifact = writer.commit(config, inputs, stats)

    On entry it takes an exclusive lock beside ``out`` (a second writer fails at once),
    removes temporaries left by dead processes, and checks what ``out`` holds now.
    Leaving without commit (an error, an interrupt) removes the temporary directory.
    """

    def __init__(self, out: str | Path, kind: str, recipe: str | None, force: bool = False):
        self.out = Path(out).absolute()
        self.kind = kind
        self.recipe = recipe
        self.force = force
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.existing: Artifact | None = None
        self.up_to_date = False
        self._lock_fd: int | None = None
        self._committed = False

    # -- entry checks -------------------------------------------------------------------
    def __enter__(self) -> "ArtifactWriter":
        parent = self.out.parent
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"{self.out}: exists and is a file; the output must be a directory (--out)")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{parent}: cannot create output directory ({exc.strerror})") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{parent}: not writable (--out)")
        self._lock()
        try:
            self._clean_stale()
            self._inspect_existing()
            if not self.up_to_date:
                self.tmp.mkdir()
        except BaseException:
            self._unlock()
            raise
        return self

    def _lock(self) -> None:
        lock_path = self.out.parent / f".{self.out.name}.lock"
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise UserError(f"{self.out}: another lmkit process is writing this output "
                                f"(lock {lock_path}); wait for it or choose another --out") from None
            raise
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_stale(self) -> None:
        """Remove temporaries of dead writers; restore an old artifact a crash left aside."""
        prefix_tmp, prefix_old = f".{self.out.name}.tmp-", f".{self.out.name}.old-"
        for entry in self.out.parent.iterdir():
            for prefix in (prefix_tmp, prefix_old):
                if not entry.name.startswith(prefix):
                    continue
                pid = entry.name[len(prefix):].split("-")[0]
                if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                    continue
                if prefix == prefix_old and not self.out.exists() and (entry / MANIFEST).is_file():
                    entry.rename(self.out)  # crashed between the two renames of a --force commit
                else:
                    shutil.rmtree(entry, ignore_errors=True)

    def _inspect_existing(self) -> None:
        if not self.out.exists():
            return
        if not (self.out / MANIFEST).exists():
            if any(self.out.iterdir()):
                raise UserError(f"{self.out}: exists, is not empty and is not an lmkit artifact; "
                                "refusing to replace it (choose another --out or remove it)")
            return
        try:
            self.existing = load(self.out)
        except ArtifactError as exc:
            if not self.force:
                raise UserError(f"{self.out}: holds a damaged artifact ({exc}); use --force to rebuild it") from None
            return
        if self.recipe is None and not self.force:
            raise UserError(f"{self.out}: already holds an artifact, and with input from stdin lmkit cannot "
                            "tell whether it is up to date; use --force to replace it")
        if self.recipe is not None and self.existing.manifest.get("recipe") == self.recipe \
                and self.existing.kind == self.kind:
            self.up_to_date = self.existing.up_to_date = True
            os.utime(self.out / MANIFEST)  # so Make sees the target as fresh
        elif not self.force:
            raise UserError(f"{self.out}: already holds a different {self.existing.kind} artifact "
                            f"(id {self.existing.id[:12]}); use --force to replace it")

    # -- commit -------------------------------------------------------------------------
    def commit(self, config: dict[str, Any], inputs: dict[str, Any], stats: dict[str, Any]) -> Artifact:
        """Seal the temporary directory with its manifest and move it into place."""
        if self.recipe is None:
            raise RuntimeError("commit needs a recipe")  # set it once the inputs are hashed
        manifest = seal(self.tmp, self.kind, self.recipe, config, inputs, stats)
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self.out.rename(old)
        self.tmp.rename(self.out)
        _fsync_path(self.out.parent)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return Artifact(path=self.out, manifest=manifest)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed and self.tmp.exists():
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            self._unlock()


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not stat.S_ISREG(path.lstat().st_mode):
                raise RuntimeError(f"{path}: artifacts hold regular files only")
            yield path


def seal(directory: Path, kind: str, recipe: str, config: dict[str, Any], inputs: dict[str, Any],
         stats: dict[str, Any]) -> dict[str, Any]:
    """Hash and fsync every file under ``directory``, then write its manifest, last.

    Used for the top-level artifact and for artifacts nested inside it (a dataset's tokenizer).
    """
    files = {}
    for file_path in sorted(_walk(directory)):
        name = file_path.relative_to(directory).as_posix()
        if name == MANIFEST:
            continue
        files[name] = {"size": file_path.stat().st_size, "sha256": sha256_file(file_path)}
        _fsync_path(file_path)
    manifest = {
        "kind": kind,
        "format_version": KINDS[kind][0],
        "id": artifact_id(kind, files, recipe, directory),
        "recipe": recipe,
        "config": config,
        "inputs": inputs,
        "files": files,
        "stats": stats,
        "lmkit_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_durable(directory / MANIFEST, manifest)
    _fsync_path(directory)
    return manifest


def write_json_durable(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def lineage(path: str | Path, _seen: frozenset = frozenset()) -> dict[str, Any]:
    """The tree of an artifact's parents back to raw input files, as nested dicts."""
    path = Path(path).resolve()
    try:
        manifest = read_manifest(path)
    except ArtifactError as exc:
        return {"path": str(path), "error": str(exc)}
    node: dict[str, Any] = {"path": str(path), "kind": manifest["kind"], "id": manifest["id"],
                            "parents": [], "files": manifest["inputs"].get("files", [])}
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
