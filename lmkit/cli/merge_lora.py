"""``lmkit merge-lora``: fold a checkpoint's unmerged LoRA adapters into its weights."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli._util import app, handle_errors
from lmkit.progress import reporter


@app.command("merge-lora")
@handle_errors
def merge_lora(
    checkpoint: Path = typer.Argument(..., help="Checkpoint saved with unmerged adapters (finetune --no-lora-merge)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory of the merged checkpoint."),
    force: bool = typer.Option(False, "--force", help="Replace an existing checkpoint at --out."),
) -> None:
    """Write a plain checkpoint whose weights are W + (alpha / rank) * B A: the same outputs, no adapters,
    usable by every command and by export."""
    from lmkit.stages.merge import merge_checkpoint  # torch loads only for commands that need it

    artifact = merge_checkpoint(checkpoint, out, force)
    state = "up to date" if artifact.up_to_date else "merged"
    reporter.out.print(f"{artifact.path}: {state} (checkpoint {artifact.id[:12]})", markup=False)
