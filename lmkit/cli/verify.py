"""``lmkit verify PATH``: re-hash every file of an artifact (and of artifacts nested in it)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit import artifacts
from lmkit.cli._util import app, handle_errors
from lmkit.errors import ArtifactError
from lmkit.progress import reporter


def problems_of(path: Path) -> tuple[list[str], list[str]]:
    """(verified artifact descriptions, problems) for PATH and every nested artifact."""
    try:
        manifest = artifacts.read_manifest(path)
    except ArtifactError as exc:
        return [], [str(exc)]
    problems = artifacts.verify_files(path, manifest, full=True)
    checked = [f"{path} ({manifest['kind']} {manifest['id'][:12]}, {len(manifest['files'])} files)"]
    nested = sorted({name.rsplit("/", 1)[0] for name in manifest["files"]
                     if name.endswith("/" + artifacts.MANIFEST)})
    for sub in nested:
        sub_checked, sub_problems = problems_of(path / sub)
        checked += sub_checked
        problems += sub_problems
    return checked, problems


@app.command("verify")
@handle_errors
def verify(path: Path = typer.Argument(..., help="An artifact directory.")) -> None:
    """Re-hash every file against the manifest; exit 1 naming each bad file."""
    checked, problems = problems_of(path)
    for line in problems:
        reporter.err.print(f"error: {line}", markup=False, style="bold red", soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    for line in checked:
        reporter.out.print(f"ok: {line}", markup=False)
