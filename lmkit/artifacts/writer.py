"""Writing artifacts atomically: a temporary sibling directory, fsync, rename, manifest last."""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
import signal
import stat
import uuid
from pathlib import Path
from typing import Any, Iterator

from lmkit import __version__
from lmkit.artifacts.manifest import (
    KINDS,
    MANIFEST,
    READS,
    Artifact,
    ArtifactError,
    artifact_id,
    load,
    manifest_checksum,
    sha256_file,
)
from lmkit.errors import UserError


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
        self._old: Path | None = None  # the replaced artifact, set aside during a --force commit

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
    def commit(self, config: dict[str, Any], inputs: dict[str, Any], stats: dict[str, Any],
               format_version: int | None = None) -> Artifact:
        """Seal the temporary directory with its manifest and move it into place (``format_version``: a later
        one than the kind's default, for an artifact that needs it)."""
        if self.recipe is None:
            raise RuntimeError("commit needs a recipe")  # set it once the inputs are hashed
        manifest = seal(self.tmp, self.kind, self.recipe, config, inputs, stats, format_version)
        # The two renames must not be split by a signal handler: hold SIGINT/SIGTERM meanwhile.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            if self.out.exists():
                self._old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                self.out.rename(self._old)
            self.tmp.rename(self.out)
            self._committed = True
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        _fsync_path(self.out.parent)
        if self._old is not None:
            shutil.rmtree(self._old, ignore_errors=True)
        return Artifact(path=self.out, manifest=manifest)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._committed:
                if self._old is not None and not self.out.exists():
                    self._old.rename(self.out)  # failed between the renames: the old one stays
                if self.tmp.exists():
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
         stats: dict[str, Any], format_version: int | None = None) -> dict[str, Any]:
    """Hash and fsync every file under ``directory``, then write its manifest, last.

    Used for the top-level artifact and for artifacts nested inside it (a dataset's tokenizer).
    ``format_version``: one the kind reads, later than its default, for an artifact that an older lmkit
    would misread (manifest.READS).
    """
    if format_version is not None and format_version not in READS[kind]:
        raise ValueError(f"{kind} format version {format_version} is not one lmkit writes")  # a bug
    files = {}
    for file_path in sorted(_walk(directory)):
        name = file_path.relative_to(directory).as_posix()
        if name == MANIFEST:
            continue
        files[name] = {"size": file_path.stat().st_size, "sha256": sha256_file(file_path)}
        _fsync_path(file_path)
    manifest: dict[str, Any] = {
        "kind": kind,
        "format_version": format_version or KINDS[kind][0],
        "id": artifact_id(kind, files, recipe, directory),
        "recipe": recipe,
        "config": config,
        "inputs": inputs,
        "files": files,
        "stats": stats,
        "lmkit_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    manifest["checksum"] = manifest_checksum(manifest)
    write_json_durable(directory / MANIFEST, manifest)
    _fsync_path(directory)
    return manifest


def write_json_durable(path: Path, obj: Any) -> None:
    data = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not valid UTF-8 (kept as surrogates): escape it
        data = json.dumps(obj, indent=2, ensure_ascii=True, sort_keys=False) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


