"""The HTTP side of ``lmkit serve``: a FastAPI app composed of the routes of the model's task (lmkit.tasks)
and the endpoints every server has.

Every server: ``GET /v1/models`` and the tokenizer endpoints lm-evaluation-harness's remote tokenizer uses
(``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``). The task adds its own (``/v1/completions``,
``/v1/classify``, ...); another kind's endpoint answers a 400 that names this model's. A route's JSON answer carries
its ``timings`` (timing.py). A client that disconnects before its JSON answer cancels the request (its rows leave the
engine's batch at the next step) and is counted with nginx's status 499; a stream stops the same way (streaming.py).
Errors are JSON (errors.py); the body limit, the API key and the request log are the
Guard's (guard.py); health, metrics and the page answer before the model is loaded (lifecycle.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, Request, Response

from lmkit.serving import errors
from lmkit.serving.config import ServeOptions
from lmkit.serving.engine import CALL, Engine, QueueFull
from lmkit.serving.errors import ApiError
from lmkit.serving.protocol import DetokenizeRequest, TokenizeRequest
from lmkit.serving.timing import Timing


@dataclass
class Server:
    """What a route may use: the loaded model (a task's; ``model.tokenizer`` and ``model.checkpoint`` on every
    kind), the engine whose worker runs it, the settings, and the kind's name."""

    model: Any
    engine: Engine
    options: ServeOptions
    kind: str

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def block_size(self) -> int:
        return self.model.checkpoint.model_config.block_size

    async def submit(self, kind: str, payload: Any, settings=None, admitted: bool = False) -> Any:
        """A job's result from the engine: 503 with Retry-After when its queue is full (unless ``admitted``: a
        stream whose 200 is sent), 504 after the timeout."""
        try:
            return await self.engine.submit(kind, payload, settings, timeout=self.options.timeout, admitted=admitted)
        except QueueFull:
            raise busy() from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than the server's timeout ({self.options.timeout:g} s)",
                           kind="timeout") from None

    async def call(self, function: Callable[[], Any]) -> Any:
        """``function()`` run on the engine's worker, which owns the model."""
        return await self.submit(CALL, function)


def busy() -> ApiError:
    return ApiError(503, "the server is busy (its queue is full); retry later", kind="server_busy",
                    headers={"Retry-After": "1"})


@dataclass
class Call:
    """One request to a route: the server, the HTTP request, and what it spent (the log line, its timings and the
    metrics read it from the request's state)."""

    server: Server
    request: Request

    @property
    def timing(self) -> Timing:
        return self.request.state.timing

    def used(self, tokens: int, completion: int = 0) -> None:
        """The request used ``tokens``, ``completion`` of them generated."""
        self.request.state.tokens = tokens
        self.timing.prompt_tokens, self.timing.completion_tokens = tokens - completion, completion


def create_app(server: Server, routes: list, elsewhere: dict[str, str]) -> FastAPI:
    """The app serving ``routes`` (lmkit.tasks.base.Route) over ``server``; a path of ``elsewhere`` (another kind's
    endpoint, with what it serves) answers a 400 naming this model's endpoints."""
    app = FastAPI(title="lmkit", docs_url=None, redoc_url=None, openapi_url=None)
    errors.install(app)
    own = ", ".join(route.path for route in routes)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.options.model_name, "object": "model", "created": 0,
                                            "owned_by": "lmkit", "kind": server.kind,
                                            "max_model_len": server.block_size}]}

    for route in routes:
        app.add_api_route(route.path, _endpoint(server, route.request, route.handler), methods=["POST"])
    for path, serves in elsewhere.items():
        if path not in {route.path for route in routes}:
            app.add_api_route(path, _refusal(path, serves, server.kind, own), methods=["POST"])
    _tokenizer_endpoints(app, server)
    return app


def _endpoint(server: Server, request_type: type, handler) -> Callable:
    """An endpoint FastAPI validates as ``request_type`` (its signature says so), calling ``handler(body, call)``;
    a JSON answer gets the request's ``timings`` (a stream puts them in its last event)."""
    async def endpoint(body, request: Request):
        request.state.timing = Timing()
        answer = await _unless_gone(request, handler(body, Call(server, request)))
        if isinstance(answer, dict):
            answer["timings"] = request.state.timing.report()
        return answer

    endpoint.__signature__ = inspect.Signature([
        inspect.Parameter("body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=request_type),
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)])
    return endpoint


CLIENT_GONE = 499  # nginx's "client closed request": no one reads the answer (counted in /metrics as such)


async def _unless_gone(request: Request, work) -> Any:
    """``work``'s answer, or an empty 499 once the client has disconnected: ``work`` is then cancelled, and with
    it the engine's job (its rows leave the batch at the next step). A stream's handler returns at once with its
    response, which watches the connection itself."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the server cancels this request (a shutdown): its work goes with it
        task.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return Response(status_code=CLIENT_GONE)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read: nothing else comes before)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _refusal(path: str, serves: str, kind: str, own: str) -> Callable:
    async def refuse():
        raise ApiError(400, f"{path}: serves {serves}; this server's model is a {kind} model: use {own}")
    return refuse


def _tokenizer_endpoints(app: FastAPI, server: Server) -> None:
    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tokenizer, specials = server.tokenizer, server.tokenizer.specials
        return {"eos_token": tokenizer.id_to_piece(specials.eos),
                "bos_token": None if specials.bos is None else tokenizer.id_to_piece(specials.bos),
                "pad_token": tokenizer.id_to_piece(specials.pad), "eos_token_id": specials.eos,
                "model_max_length": server.block_size - 1, "vocab_size": tokenizer.vocab_size}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        # A special token's own text ("</s>") is that token: lm-eval's remote tokenizer finds the ids this way.
        tokenizer = server.tokenizer
        special = {tokenizer.id_to_piece(i): i for i in tokenizer.specials.ids}
        tokens = [special[body.prompt]] if body.prompt in special else tokenizer.encode(body.prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": server.block_size - 1}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if any(not 0 <= t < server.tokenizer.vocab_size for t in body.tokens):
            raise ApiError(400, f"tokens: ids must be in [0, {server.tokenizer.vocab_size})", "tokens")
        return {"prompt": server.tokenizer.decode(body.tokens)}
