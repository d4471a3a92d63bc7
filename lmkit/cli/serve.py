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
    help="Serve a checkpoint over HTTP with an OpenAI-compatible API, the routes of its kind: /v1/completions and "
         "/v1/chat/completions (chat models: the conversation rendered with their chat template; SFT models: the "
         "prompt template) with streaming, log-probabilities and echo; /v1/classify for classifiers "
         "(text_pair for a pair classifier); /v1/fill-mask for masked LMs; /v1/qa for question-answering models; "
         "and on every server /v1/models and the tokenizer endpoints, /health/live, /health/ready and /health (503 "
         "until the model is loaded and warmed up: the server listens at once and loads it meanwhile), /metrics "
         "(Prometheus) and a chat page at /. Completion requests share one running batch that rows join and "
         "leave at every step (continuous batching, whatever their sampling settings), and a prompt's beginning "
         "computed for an earlier request (a system prompt) is reused. Needs lmkit[serve].\n\n"
         "Example: lmkit serve runs/sft/final --port 8000 --api-key $KEY",
    render=render, run="lmkit.stages.serve:run")
