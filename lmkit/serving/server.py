"""Running ``lmkit serve``'s app under uvicorn: loopback by default, the model loaded once the socket listens (the
health endpoints answer meanwhile: lifecycle.py), and on SIGTERM no new connections, in-flight requests finished
within the grace period, then the signal reported (the CLI exits 143)."""

from __future__ import annotations

import ipaddress
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.units import parse_duration

if TYPE_CHECKING:
    from lmkit.serving.lifecycle import Service

SERVE_EXTRA = "lmkit[serve]"


@dataclass
class Stopped:
    """How the server ended: the signal that stopped it (None: it ended by itself)."""

    signum: int | None


def require_serve_extra() -> None:
    """Refuse before any work when FastAPI, uvicorn or prometheus_client is missing, naming the extra that brings
    them."""
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError(f"lmkit serve: needs FastAPI, uvicorn and prometheus_client; install {SERVE_EXTRA}") from None


def loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (a name other than localhost counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(service: Service, host: str, port: int, grace: str) -> Stopped:
    """Serve ``service`` on host:port until a signal: its model loads once the socket listens, and its engine's
    worker runs until the end. A model that fails to load stops the server, and its error is raised here."""
    import uvicorn

    server = _server(uvicorn.Config(service.asgi, host=host, port=port, log_level="warning", access_log=False,
                                    timeout_graceful_shutdown=parse_duration(grace), lifespan="off"),
                     on_listening=lambda: service.start(on_failure=lambda _: setattr(server, "should_exit", True)))
    # uvicorn handles SIGINT/SIGTERM while it runs, then re-raises the signal to the handler before it: make
    # that a no-op, so the server's own shutdown (in-flight requests finished) is the whole story.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if service.error is not None:
        raise service.error
    if not server.started and server.signum is None:
        raise UserError(f"--host {host} --port {port}: could not listen there (in use, or not an address of this "
                        "machine)")
    return Stopped(server.signum)


def _server(config, on_listening: Callable[[], None]):
    """A uvicorn.Server that calls ``on_listening()`` once its socket listens and remembers which signal stopped
    it (uvicorn is imported only when serving)."""
    import uvicorn

    class Server(uvicorn.Server):
        signum: int | None = None

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if self.started:
                on_listening()

        def handle_exit(self, sig: int, frame) -> None:
            if self.signum is None and sig == signal.SIGTERM:
                reporter.info("SIGTERM: finishing the requests in flight, accepting no new ones")
            self.signum = sig
            super().handle_exit(sig, frame)

    return Server(config)
