"""The life of ``lmkit serve`` around its model: HTTP answers as soon as it listens, while the model loads and warms
up on a thread of its own; the health endpoints say which phase it is in, and the model's endpoints answer 503
until it is loaded.

- ``GET /health/live``: 200 while the process serves HTTP (a liveness probe);
- ``GET /health/ready``: 503 while the model loads or warms up (compiles), 200 once requests are served;
- ``GET /health``: as ready, with the model's name and kind, the queue, the running rows and the largest
  ``max_tokens`` a request may ask for (the page reads them);
- ``GET /metrics`` (metrics.py) and ``GET /``, the chat page (page.py).

None of them queues on the model's worker, so they answer under full load too.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lmkit.progress import reporter
from lmkit.serving import errors, page
from lmkit.serving.config import ServeOptions
from lmkit.serving.errors import error_response
from lmkit.serving.guard import Guard
from lmkit.serving.metrics import Metrics

LOADING, WARMING, READY, FAILED = "loading", "warming", "ready", "failed"
OPERATIONS = ("/", "/health", "/health/live", "/health/ready", "/metrics")  # served before the model is loaded


class Service:
    """What ``lmkit serve`` runs: ``asgi``, the whole app (answering from the start), and the model behind it,
    loaded by ``load(service)`` (which returns the model's app and its serving.app.Server, and calls
    :meth:`warming` before a warm-up).

    ``routes``: every path the model's app may serve, named in the metrics (any other counts as ``other``)."""

    def __init__(self, options: ServeOptions, kind: str, load: Callable[[Service], tuple[Any, Any]],
                 routes: Iterable[str]):
        self.options, self.kind, self._load = options, kind, load
        self.phase = LOADING
        self.app = None                  # the model's ASGI app, once loaded
        self.server = None               # its serving.app.Server (the model and its engine)
        self.error: Exception | None = None
        self.engine_started = False
        self.metrics = Metrics(Guard(Front(self), options), (*OPERATIONS, *routes), engine=lambda: self.engine,
                               ready=lambda: self.ready)
        self.asgi = self.metrics

    @property
    def engine(self):
        return None if self.server is None else self.server.engine

    @property
    def ready(self) -> bool:
        """Loaded, its engine started and (an engine that says so) ready."""
        return self.phase == READY and self.engine_started and bool(getattr(self.engine, "ready", True))

    @property
    def status(self) -> str:
        if self.ready:
            return READY
        return WARMING if self.phase == READY else self.phase  # an engine still warming up

    def warming(self) -> None:
        self.phase = WARMING

    def load(self) -> None:
        """Load the model here and now (its engine is not started)."""
        self.app, self.server = self._load(self)
        self.phase = READY

    def start(self, on_failure: Callable[[Exception], None]) -> None:
        """Load the model on a thread of its own, then start its engine; ``on_failure(error)`` if that fails (the
        error stays in ``self.error``)."""
        threading.Thread(target=self._start, args=(on_failure,), name="lmkit-serve-loader", daemon=True).start()

    def _start(self, on_failure: Callable[[Exception], None]) -> None:
        started = time.monotonic()
        try:
            self.load()
            self.server.engine.start()
            self.engine_started = True
        except Exception as exc:  # noqa: BLE001 -- handed to the main thread, which raises it (its traceback kept)
            self.phase, self.error = FAILED, exc
            on_failure(exc)
            return
        reporter.info(f"model loaded in {time.monotonic() - started:.1f} s: serving requests")

    def stop(self) -> None:
        if self.engine_started:
            self.server.engine.stop()


class Front:
    """ASGI: the operations' endpoints always; the model's app once it is loaded, and before that a 503 naming
    the phase (with Retry-After)."""

    def __init__(self, service: Service):
        self.service = service
        self.operations = operations_app(service)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPERATIONS:
            return await self.operations(scope, receive, send)
        if self.service.app is None:
            refusal = error_response(503, f"the model is {self.service.status}; retry later (GET /health/ready says "
                                     "when it is ready)", kind="server_loading", headers={"Retry-After": "1"})
            return await refusal(scope, receive, send)
        return await self.service.app(scope, receive, send)


def operations_app(service: Service) -> FastAPI:
    app = FastAPI(title="lmkit", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)

    @app.get("/health/live")
    async def live():
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready():
        return JSONResponse({"status": service.status}, status_code=200 if service.ready else 503)

    @app.get("/health")
    async def health():
        engine = service.engine
        body = {"status": "ok" if service.ready else service.status, "model": service.options.model_name,
                "kind": service.kind, "queued": getattr(engine, "pending", 0),
                "running": getattr(engine, "running", 0), "max_tokens": service.options.max_tokens}
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/metrics")
    async def metrics():
        return service.metrics.response()

    @app.get("/")
    async def chat_page():
        return page.response()

    return app
