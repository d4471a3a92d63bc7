"""``lmkit serve``: a checkpoint served over HTTP. The checkpoint's task (lmkit.tasks) loads its model and gives
its routes; the server around them (errors, the API key and body limit, health, metrics, the chat page, the
tokenizer endpoints) is the same for every kind."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from lmkit import tasks
from lmkit.checkpoint import Checkpoint, read_checkpoint
from lmkit.progress import reporter
from lmkit.serving.config import ServeConfig, ServeOptions
from lmkit.serving.engine import Engine, scheduler_for
from lmkit.serving.server import Stopped, listen, loopback, require_serve_extra
from lmkit.tasks.base import LoadOptions, TaskSpec, article
from lmkit.units import parse_duration, parse_size

# Every server's own paths besides the operations' (lifecycle.OPERATIONS) and the tasks' endpoints.
SERVER_PATHS = ("/v1/models", "/tokenizer_info", "/tokenize", "/detokenize")


def run(config: ServeConfig) -> Stopped:
    """Serve until a signal: the app of :func:`prepare` on --host and --port, answering health checks at once
    while the model loads."""
    require_serve_extra()
    checkpoint = read_checkpoint(config.checkpoint)
    service = prepare(config, checkpoint)
    if not service.options.api_key and not loopback(config.host):
        reporter.warn(f"--host {config.host}: listening beyond this machine without an API key: anyone who reaches "
                      "it can use the model (set --api-key or LMKIT_API_KEY)")
    arch = checkpoint.model_config.arch
    reporter.info(f"serving {service.options.model_name} ({service.kind}, {arch}) on http://{config.host}:"
                  f"{config.port}" + (" (API key required)" if service.options.api_key else "")
                  + "; loading the model (GET /health/ready: 503 until it is ready)")
    return listen(service, config.host, config.port, config.grace)


def build(config: ServeConfig):
    """The ASGI app serving the checkpoint, loaded now, and its Server (the loaded model, the engine whose worker
    runs it, not started yet, and the settings): for tests and in-process use."""
    require_serve_extra()
    service = prepare(config)
    service.load()
    return service.asgi, service.server


def prepare(config: ServeConfig, checkpoint: Checkpoint | None = None):
    """The server before its model: the checkpoint read and its kind found (a wrong path is refused now), the
    settings resolved, and a lifecycle.Service whose app answers at once and whose ``start`` loads the model."""
    from lmkit.serving.lifecycle import Service

    checkpoint = checkpoint or read_checkpoint(config.checkpoint)
    spec = tasks.for_checkpoint(checkpoint)
    path = Path(config.checkpoint).resolve()
    name = config.model_name or (path.parent.name if path.name == "final" else path.name)
    options = ServeOptions(model_name=name, api_key=config.api_key or os.environ.get("LMKIT_API_KEY") or None,
                           max_tokens=config.max_tokens, timeout=parse_duration(config.timeout),
                           max_body=parse_size(config.max_body), log_requests=not reporter.quiet)
    routes = {endpoint for other in tasks.TASKS.values() for endpoint in other.endpoints}
    return Service(options, spec.name, lambda service: _load(config, checkpoint, spec, options, service),
                   routes=(*SERVER_PATHS, *sorted(routes)))


def _load(config: ServeConfig, checkpoint: Checkpoint, spec: TaskSpec, options: ServeOptions, service):
    """The model's app and its Server: the model loaded (and compiled and warmed up, where it is), its engine."""
    from lmkit.serving.app import Server, create_app

    # A server's job has no end: a compile (auto) always pays.
    model = spec.load(checkpoint, LoadOptions(config.device, config.precision, batch_size=config.max_batch,
                                              truncate="error", compile=config.compile, new_tokens=math.inf))
    engine = Engine(model if spec.decodes else None, max_batch=config.max_batch,
                    batch_wait=parse_duration(config.batch_wait), max_queue=config.max_queue,
                    scheduler=scheduler_for(config.scheduler, checkpoint.model_config.arch),
                    prefill_chunk=config.prefill_chunk, prefix_cache_tokens=config.prefix_cache_tokens)
    if spec.decodes and model.encode_step is not None:
        service.warming()
        started = time.monotonic()
        reporter.info("torch.compile: compiling the model before serving (--no-compile to skip)")
        engine.warm_up()
        reporter.info(f"compiled in {time.monotonic() - started:.1f} s")
    server = Server(model, engine, options, spec.name)
    elsewhere: dict[str, str] = {}  # other kinds' endpoints, and what they serve: answered with a 400
    for other in tasks.TASKS.values():
        for endpoint in other.endpoints:
            elsewhere.setdefault(endpoint, article(other.summary))
    return create_app(server, spec.routes(server), elsewhere), server
