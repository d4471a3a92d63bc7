"""Running an app under uvicorn: loopback by default, and on SIGTERM no new connections, in-flight requests
finished within the grace period, then the signal reported (the CLI exits 143)."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.serving.engine import Engine
from lmkit.units import parse_duration

SERVE_EXTRA = "lmkit[serve]"


@dataclass
class Stopped:
    """How the server ended: the signal that stopped it (None: it ended by itself)."""

    signum: int | None


def require_serve_extra() -> None:
    """Refuse before any work when FastAPI or uvicorn is missing, naming the extra that brings them."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(f"lmkit serve: needs FastAPI and uvicorn; install {SERVE_EXTRA}") from None


def listen(app, engine: Engine, host: str, port: int, grace: str) -> Stopped:
    """Serve ``app`` (ASGI) on host:port until a signal, the engine's worker running meanwhile."""
    import uvicorn

    server = _server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=parse_duration(grace), lifespan="off"))
    engine.start()
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
        raise UserError(f"--host {host} --port {port}: could not listen there (in use, or not an address of this "
                        "machine)")
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
