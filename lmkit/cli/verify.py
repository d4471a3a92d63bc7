"""``lmkit verify PATH``: re-hash every file of an artifact (and of artifacts nested in it)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit import artifacts
from lmkit.cli._util import app, handle_errors
from lmkit.progress import reporter


@app.command("verify")
@handle_errors
def verify(path: Path = typer.Argument(..., help="An artifact directory.")) -> None:
    """Re-hash every file against the manifest; exit 1 naming each bad file."""
    checked, problems = artifacts.verify_tree(path)
    for line in problems:
        reporter.err.print(f"error: {line}", markup=False, style="bold red", soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    for line in checked:
        reporter.out.print(f"ok: {line}", markup=False)
