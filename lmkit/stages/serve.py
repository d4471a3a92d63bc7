"""``lmkit serve``: a checkpoint served over HTTP. The checkpoint's task (lmkit.tasks) loads its model and gives
its routes; the server around them (errors, the API key and body limit, health, the tokenizer endpoints) is
the same for every kind."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from lmkit import tasks
from lmkit.checkpoint import read_checkpoint
from lmkit.progress import reporter
from lmkit.serving.config import ServeConfig, ServeOptions
from lmkit.serving.engine import Engine
from lmkit.serving.server import Stopped, listen, require_serve_extra
from lmkit.tasks.base import LoadOptions, article
from lmkit.units import parse_duration, parse_size


def run(config: ServeConfig) -> Stopped:
    """Serve until a signal: the app of :func:`build`, on --host and --port."""
    app, server = build(config)
    arch = server.model.checkpoint.model_config.arch
    reporter.info(f"serving {server.options.model_name} ({server.kind}, {arch}) on http://{config.host}:"
                  f"{config.port}" + (" (API key required)" if server.options.api_key else ""))
    return listen(app, server.engine, config.host, config.port, config.grace)


def build(config: ServeConfig):
    """The ASGI app serving the checkpoint, and its Server (the loaded model, the engine whose worker runs it,
    not started yet, and the settings)."""
    require_serve_extra()
    from lmkit.serving.app import Server, create_app
    from lmkit.serving.guard import Guard

    checkpoint = read_checkpoint(config.checkpoint)
    spec = tasks.for_checkpoint(checkpoint)
    # A server's job has no end: a compile (auto) always pays.
    model = spec.load(checkpoint, LoadOptions(config.device, config.precision, batch_size=config.max_batch,
                                              truncate="error", compile=config.compile, new_tokens=math.inf))
    if spec.decodes and model.encode_step is not None:
        started = time.monotonic()
        reporter.info("torch.compile: compiling the model before serving (--no-compile to skip)")
        model.warm_up()
        reporter.info(f"compiled in {time.monotonic() - started:.1f} s")
    engine = Engine(model if spec.decodes else None, max_batch=config.max_batch,
                    batch_wait=parse_duration(config.batch_wait), max_queue=config.max_queue)
    path = Path(config.checkpoint).resolve()
    name = config.model_name or (path.parent.name if path.name == "final" else path.name)
    options = ServeOptions(model_name=name, api_key=config.api_key or os.environ.get("LMKIT_API_KEY") or None,
                           max_tokens=config.max_tokens, timeout=parse_duration(config.timeout),
                           max_body=parse_size(config.max_body), log_requests=not reporter.quiet)
    server = Server(model, engine, options, spec.name)
    elsewhere: dict[str, str] = {}  # other kinds' endpoints, and what they serve: answered with a 400
    for other in tasks.TASKS.values():
        for endpoint in other.endpoints:
            elsewhere.setdefault(endpoint, article(other.summary))
    return Guard(create_app(server, spec.routes(server), elsewhere), options), server
