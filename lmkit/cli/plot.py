"""``lmkit plot RUN_DIR [RUN_DIR ...]``: training curves of one or several runs as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lmkit.cli._util import app, handle_errors
from lmkit.errors import UserError
from lmkit.plotting import PLOT_FILE, plot_runs
from lmkit.progress import reporter


@app.command("plot", no_args_is_help=True)
@handle_errors
def plot(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories of lmkit pretrain or finetune "
                                          "(each holds metrics.jsonl)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help=f"PNG file to write; default RUN_DIR/{PLOT_FILE} "
                                       "for one run, required for several.", show_default=False),
) -> None:
    """Plot training loss (against steps and tokens), learning rate and validation metrics; several runs
    are overlaid, one colour each.

    Example: lmkit plot runs/gpt runs/gpt-wide --out compare.png
    """
    if out is None:
        if len(run_dirs) > 1:
            raise UserError("--out: required when plotting several runs (e.g. --out compare.png)")
        out = run_dirs[0] / PLOT_FILE
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: must be a .png file")
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a .png file")
    path = plot_runs(list(run_dirs), out)
    reporter.out.print(f"{path}: training curves of {len(run_dirs)} run(s)", markup=False, soft_wrap=True)
