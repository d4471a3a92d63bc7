"""``lmkit serve``: an OpenAI-compatible HTTP server for a checkpoint."""

from __future__ import annotations

import signal

import typer

from lmkit.cli._util import config_command
from lmkit.progress import reporter
from lmkit.serving.config import ServeConfig


def render(stopped) -> None:
    if stopped.signum is not None:
        reporter.info(f"server stopped ({signal.Signals(stopped.signum).name})")
        raise typer.Exit(128 + stopped.signum)


config_command(
    "serve", ServeConfig,
    help="Serve a checkpoint over HTTP with an OpenAI-compatible API: /v1/completions and /v1/chat/completions "
         "(SFT) with streaming, log-probabilities and echo; /v1/classify for classifiers; /v1/fill-mask for masked "
         "LMs; /v1/models and /health. Concurrent requests are batched into one decode. Needs lmkit[serve].\n\n"
         "Example: lmkit serve runs/sft/final --port 8000 --api-key $KEY",
    render=render, run="lmkit.stages.serve:run")
