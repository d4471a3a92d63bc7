"""The ASGI middleware in front of every route of ``lmkit serve``: the request body size limit (413), the API key
(401) and one log line per request (method, path, status, tokens, milliseconds)."""

from __future__ import annotations

import hmac
import time

from fastapi.responses import JSONResponse

from lmkit.progress import reporter
from lmkit.serving.config import ServeOptions
from lmkit.serving.errors import error_response

# What the API key leaves open: the health probes (orchestrators and load balancers send no key) and the chat page,
# which holds no data and sends the key its user types with each request. The API and /metrics (it tells the
# traffic) need the key. serve's --api-key help says the same.
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/"})
# Probes and scrapes are not logged (an orchestrator asks every few seconds), but for the Guard's own refusals.
UNLOGGED_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


class Guard:
    """ASGI middleware: the body size limit (413), the API key (401), and one log line per request."""

    def __init__(self, app, options: ServeOptions):
        self.app, self.options = app, options

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}
        state = scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _drain(receive, limit=self.options.max_body * 200)
                await refusal(scope, receive, sending)
            else:
                body = await self._read_body(receive)
                if body is None:
                    await error_response(413, f"request body: larger than the server's limit of "
                                         f"{self.options.max_body:,} bytes")(scope, receive, sending)
                else:
                    await self.app(scope, _replay(body, receive), sending)
        finally:
            if self.options.log_requests and (scope["path"] not in UNLOGGED_PATHS or status["code"] in (401, 413)):
                milliseconds = (time.perf_counter() - started) * 1000
                reporter.info(f"{scope['method']} {scope['path']} {status['code']} tokens={state.get('tokens', 0)} "
                              f"{milliseconds:.0f}ms")

    def _refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.options.max_body:
            return error_response(413, f"request body: {int(length):,} bytes, larger than the server's limit of "
                                  f"{self.options.max_body:,} bytes")
        if self.options.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            expected = f"Bearer {self.options.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                                      kind="authentication_error")
        return None

    async def _read_body(self, receive) -> bytes | None:
        """The whole body (chunked or not), or None when it is over the limit (the rest is then drained)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.options.max_body:
                if message.get("more_body"):
                    await _drain(receive, limit=self.options.max_body * 200)
                return None
            if not message.get("more_body"):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive):
    """An ASGI receive that gives the app the body already read, then waits on the connection (disconnects)."""
    sent = {"done": False}

    async def replay():
        if not sent["done"]:
            sent["done"] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


async def _drain(receive, limit: int) -> None:
    """Read (and drop) what is left of a refused request's body, so the client reads the answer."""
    read = 0
    while read <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body"):
            return
