"""Running the app under uvicorn: loopback by default, one log line per request, and on SIGTERM no new
connections, in-flight requests finished within the grace period, then exit 143."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.serving.config import ServeConfig
from lmkit.units import parse_duration, parse_size

SERVE_EXTRA = "lmkit[serve]"


@dataclass
class Stopped:
    """How the server ended: the signal that stopped it (None: it ended by itself)."""

    signum: int | None


def serve(config: ServeConfig) -> Stopped:
    try:
        import uvicorn

        from lmkit.serving.app import Guard, ServeOptions, create_app
    except ImportError:
        raise UserError(f"lmkit serve: needs FastAPI and uvicorn; install {SERVE_EXTRA}") from None
    from lmkit.serving.engine import Engine
    from lmkit.checkpoint import read_checkpoint

    checkpoint = read_checkpoint(config.checkpoint)
    engine = Engine(checkpoint, config.device, config.precision, max_batch=config.max_batch,
                    batch_wait=parse_duration(config.batch_wait), max_queue=config.max_queue, compile=config.compile)
    if engine.compiled:
        started = time.monotonic()
        reporter.info("torch.compile: compiling the model before serving (--no-compile to skip)")
        engine.warm_up()
        reporter.info(f"compiled in {time.monotonic() - started:.1f} s")
    path = Path(config.checkpoint).resolve()
    name = config.model_name or (path.parent.name if path.name == "final" else path.name)
    options = ServeOptions(model_name=name, api_key=config.api_key or os.environ.get("LMKIT_API_KEY") or None,
                           max_tokens=config.max_tokens, timeout=parse_duration(config.timeout),
                           max_body=parse_size(config.max_body), log_requests=not reporter.quiet)
    app = Guard(create_app(engine, options), options)
    server = _server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=parse_duration(config.grace), lifespan="off"))
    engine.start()
    reporter.info(f"serving {name} ({engine.mode}, {checkpoint.model_config.arch}) on http://{config.host}:"
                  f"{config.port}" + (" (API key required)" if options.api_key else ""))
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises the signal to the handler before it: make
    # that a no-op, so the server's own shutdown (in-flight requests finished) is the whole story.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        engine.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started and server.signum is None:
        raise UserError(f"--host {config.host} --port {config.port}: could not listen there (in use, or not an "
                        "address of this machine)")
    return Stopped(server.signum)


def _server(config):
    """A uvicorn.Server that remembers which signal stopped it (uvicorn is imported only when serving)."""
    import uvicorn

    class Server(uvicorn.Server):
        signum: int | None = None

        def handle_exit(self, sig: int, frame) -> None:
            if self.signum is None and sig == signal.SIGTERM:
                reporter.info("SIGTERM: finishing the requests in flight, accepting no new ones")
            self.signum = sig
            super().handle_exit(sig, frame)

    return Server(config)
