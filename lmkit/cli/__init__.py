"""The ``lmkit`` command: one typer app, one module per command."""

from __future__ import annotations

import signal
from typing import Optional

import typer

from lmkit import __version__
from lmkit.cli._util import app
from lmkit.errors import Interrupted
from lmkit.progress import reporter


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only results and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print more detail about each step."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the lmkit version and exit."),
) -> None:
    reporter.configure(quiet=quiet, verbose=verbose)


# Registering the commands: each module adds itself to `app` on import.
from lmkit.cli import (  # noqa: E402,F401
    chat,
    demo,
    evaluate,
    export,
    finetune,
    generate,
    import_model,
    info,
    inspect,
    lineage,
    merge_lora,
    plot,
    preprocess,
    pretrain,
    runs,
    serve,
    verify,
)


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)
    # A shell starting us in the background (CI runners, nohup) may have set SIGINT to be
    # ignored; `kill -INT` must still stop a run cleanly with exit code 130.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    app()
