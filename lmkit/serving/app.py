"""The HTTP side of ``lmkit serve``: an OpenAI-compatible API over an Engine (FastAPI).

Endpoints: ``GET /health``, ``GET /v1/models``; for text models ``POST /v1/completions`` and, for SFT
checkpoints, ``POST /v1/chat/completions`` (both stream as server-sent events with ``stream: true``);
for classifiers ``POST /v1/classify`` (``text_pair`` too for a pair classifier); for masked LMs ``POST /v1/fill-mask``;
for question-answering (span) models ``POST /v1/qa`` (``question`` and ``context``); and the tokenizer
endpoints lm-evaluation-harness's remote tokenizer uses (``GET /tokenizer_info``, ``POST /tokenize``,
``POST /detokenize``). Every error is a JSON ``{"error": {"message", "type", "param", "code"}}`` with
a 4xx status for the client's mistakes; no traceback or server path reaches a client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from lmkit.errors import UserError
from lmkit.generation.classify import reads_pairs
from lmkit.generation.model import CLASSIFY, FILL_MASK, QA, TEXT
from lmkit.generation.settings import SamplingSettings
from lmkit.progress import reporter
from lmkit.tokenizer import Tokenizer
from lmkit.serving.engine import Engine, QueueFull
from lmkit.serving.protocol import (ChatRequest, ClassifyRequest, CompletionRequest, DetokenizeRequest,
                                    FillMaskRequest, QARequest, Sampling, TokenizeRequest)

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions
CHAT_MAX_TOKENS = 256    # a chat answer's default length (capped by --max-tokens)


@dataclass(frozen=True)
class ServeOptions:
    model_name: str
    api_key: str | None = None
    max_tokens: int = 512          # the largest max_tokens a request may ask for
    timeout: float = 60.0          # seconds a request may take, queueing included
    max_body: int = 1 << 20        # bytes of a request body
    log_requests: bool = True


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status, headers=headers)


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
            if self.options.log_requests:
                milliseconds = (time.perf_counter() - started) * 1000
                reporter.info(f"{scope['method']} {scope['path']} {status['code']} tokens={state.get('tokens', 0)} "
                              f"{milliseconds:.0f}ms")

    def _refusal(self, scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.options.max_body:
            return error_response(413, f"request body: {int(length):,} bytes, larger than the server's limit of "
                                  f"{self.options.max_body:,} bytes")
        if self.options.api_key and scope["path"] != "/health":
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


def create_app(engine: Engine, options: ServeOptions) -> FastAPI:
    app = FastAPI(title="lmkit", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.kind, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        if first.get("type") == "json_invalid":
            return error_response(400, f"body: not valid JSON ({first.get('msg')})")
        return error_response(400, f"{where}: {first.get('msg')}", where)

    @app.exception_handler(UserError)
    async def user_error(_request: Request, exc: UserError):
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def bug(_request: Request, exc: Exception):
        reporter.warn("".join(traceback.format_exception(exc)).rstrip())  # for the server's log only
        return error_response(500, "internal server error", kind="server_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": options.model_name, "kind": engine.mode, "queued": engine.pending}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": 0,
                                            "owned_by": "lmkit", "kind": engine.mode,
                                            "max_model_len": engine.block_size}]}

    async def run(kind: str, payload: Any, settings: SamplingSettings | None = None) -> Any:
        try:
            return await engine.submit(kind, payload, settings, timeout=options.timeout)
        except QueueFull:
            raise ApiError(503, "the server is busy (its queue is full); retry later", kind="server_busy",
                           headers={"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than the server's timeout ({options.timeout:g} s)",
                           kind="timeout") from None

    def sampling(body: Sampling, default_tokens: int) -> SamplingSettings:
        max_tokens = default_tokens if body.max_tokens is None else body.max_tokens
        if max_tokens > options.max_tokens:
            raise ApiError(400, f"max_tokens: {max_tokens} is more than this server allows ({options.max_tokens})",
                           "max_tokens")
        if any(not stop for stop in body.stops()):
            raise ApiError(400, "stop: a stop string must not be empty", "stop")
        return SamplingSettings(max_new_tokens=max(max_tokens, 1), temperature=body.temperature, top_k=body.top_k,
                                top_p=body.top_p, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                                stop=body.stops(), seed=body.seed or 0)

    def need(mode: str, endpoint: str) -> None:
        if engine.mode != mode:
            uses = {TEXT: "/v1/completions", CLASSIFY: "/v1/classify", FILL_MASK: "/v1/fill-mask",
                    QA: "/v1/qa"}[engine.mode]
            raise ApiError(400, f"{endpoint}: this server's model is a {engine.mode} model; use {uses}")

    def prompts_of(body: CompletionRequest) -> list[tuple[str, list[int]]]:
        """(text, the model's input ids) of each prompt: text, or token ids (a causal model reads ``</s>``
        first, as training and generate do)."""
        prompt = body.prompt
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise ApiError(400, "prompt: must not be empty", "prompt")
        if all(isinstance(p, int) for p in prompt):
            prompt = [prompt]
        found = []
        for index, item in enumerate(prompt):
            name = f"prompt[{index}]" if len(prompt) > 1 else "prompt"
            if isinstance(item, str):
                found.append((item, engine.encode(item, name)))
                continue
            if not item or any(not 0 <= t < engine.tokenizer.vocab_size for t in item):
                raise ApiError(400, f"{name}: token ids must be in [0, {engine.tokenizer.vocab_size})", "prompt")
            ids = list(item) if engine.generator.template is not None else [engine.generator.start, *item]
            if len(ids) >= engine.block_size:
                raise ApiError(400, f"{name}: {len(item)} tokens, more than the model's context allows "
                               f"({engine.block_size - 1})", "prompt")
            found.append((engine.tokenizer.decode(item), ids))
        return found

    def skip(ids: list[int]) -> int:
        """How many leading ids are lmkit's own (the ``</s>`` before a causal prompt), not the prompt's."""
        return 1 if ids and ids[0] == engine.generator.start and engine.generator.template is None else 0

    async def complete(prompts: list[tuple[str, list[int]]], body: Sampling, settings: SamplingSettings, max_tokens: int,
                       on_text=None):
        if len(prompts) * body.n > engine.max_batch:
            raise ApiError(400, f"prompt: {len(prompts)} prompt(s) x n {body.n} = {len(prompts) * body.n} completions, "
                           f"more than this server decodes at once ({engine.max_batch}); send fewer per request",
                           "prompt")
        rows = engine.rows([ids for _, ids in prompts], [text for text, _ in prompts], body.n, settings.seed,
                           on_text)
        if max_tokens == 0:
            for row in rows:
                row.finish = "length"
            return rows
        return await run("complete", rows, settings)

    def token_text(token: int) -> str:
        """A token as logprobs name it: lmkit's SentencePiece piece ("\u2581the"), an imported tokenizer's
        decoded text (not byte-level BPE's "\u0120the" or WordPiece's "##s")."""
        if isinstance(engine.tokenizer, Tokenizer):
            return engine.tokenizer.id_to_piece(token)
        return engine.tokenizer.decode([token])

    async def logprobs_of(prompts, rows, n: int, top: int, echo: bool) -> list[dict]:
        wanted = []
        for index, row in enumerate(rows):
            ids = prompts[index // n][1]
            wanted.append((ids + row.new_ids, top))
        scored = await run("score", [(full[skip(prompts[i // n][1]):], k) for i, (full, k) in enumerate(wanted)])
        results = []
        for index, (row, (logprobs, tops)) in enumerate(zip(rows, scored)):
            ids = prompts[index // n][1]
            full = ids + row.new_ids
            offset = skip(ids)  # the scores are of full[offset:], each given </s> and the ids before it
            values = logprobs
            top_rows = [{token_text(t): v for t, v in row_top.items()} for row_top in tops]
            start = skip(ids) if echo else len(ids)
            tokens = full[start:]
            pieces = [token_text(t) for t in tokens]
            offsets, position = [], 0
            for piece in pieces:
                offsets.append(position)
                position += len(piece.replace("\u2581", " "))
            results.append({"tokens": pieces, "token_logprobs": values[start - offset:],
                            "top_logprobs": top_rows[start - offset:] if top else None, "text_offset": offsets})
        return results

    def usage(prompts, rows) -> dict:
        prompt_tokens = sum(len(ids) - skip(ids) for _, ids in prompts)
        completion_tokens = sum(len(row.new_ids) for row in rows)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        need(TEXT, "/v1/completions")
        max_tokens = DEFAULT_MAX_TOKENS if body.max_tokens is None else body.max_tokens
        settings = sampling(body, DEFAULT_MAX_TOKENS)
        prompts = prompts_of(body)
        name, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            if body.echo or body.logprobs is not None:
                raise ApiError(400, "stream: cannot be combined with echo or logprobs on this server", "stream")
            return stream(request, prompts, body, settings, max_tokens, name, created, chat=False)
        rows = await complete(prompts, body, settings, max_tokens)
        logprobs = (await logprobs_of(prompts, rows, body.n, body.logprobs or 0, body.echo)
                    if body.logprobs is not None or body.echo else [None] * len(rows))
        choices = []
        for index, row in enumerate(rows):
            text = (prompts[index // body.n][0] if body.echo else "") + row.text
            choices.append({"index": index, "text": text, "logprobs": logprobs[index] if body.logprobs is not None
                            or body.echo else None, "finish_reason": row.finish})
        request.state.tokens = usage(prompts, rows)["total_tokens"]
        return {"id": name, "object": "text_completion", "created": created, "model": options.model_name,
                "choices": choices, "usage": usage(prompts, rows)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        need(TEXT, "/v1/chat/completions")
        if engine.generator.template is None:
            raise ApiError(400, "/v1/chat/completions: needs an instruction-tuned (sft) checkpoint, whose prompt "
                           "template frames the conversation; use /v1/completions for this model")
        if body.messages[-1].role != "user":
            raise ApiError(400, "messages: the last message must be the user's", "messages")
        # The SFT template has one {prompt}: the system and user turns, in order, fill it.
        text = "\n\n".join(m.content for m in body.messages if m.role in ("system", "user"))
        prompts = [(text, engine.encode(text, "messages"))]
        default = min(CHAT_MAX_TOKENS, options.max_tokens)
        max_tokens = default if body.max_tokens is None else body.max_tokens
        settings = sampling(body, default)
        name, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return stream(request, prompts, body, settings, max_tokens, name, created, chat=True)
        rows = await complete(prompts, body, settings, max_tokens)
        request.state.tokens = usage(prompts, rows)["total_tokens"]
        return {"id": name, "object": "chat.completion", "created": created, "model": options.model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": row.text},
                             "finish_reason": row.finish} for i, row in enumerate(rows)],
                "usage": usage(prompts, rows)}

    def stream(request: Request, prompts, body: Sampling, settings, max_tokens: int, name: str, created: int,
               chat: bool) -> StreamingResponse:
        if engine.pending >= engine.max_queue:
            raise ApiError(503, "the server is busy (its queue is full); retry later", kind="server_busy",
                           headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(complete(prompts, body, settings, max_tokens,
                                              on_text=lambda i, t: loop.call_soon_threadsafe(pieces.put_nowait,
                                                                                             (i, t))))
        task.add_done_callback(lambda _: pieces.put_nowait(None))
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(index: int, text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta = {"role": "assistant"} if first else ({"content": text} if text is not None else {})
                choice = {"index": index, "delta": delta, "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "finish_reason": finish}
            chunk = {"id": name, "object": kind, "created": created, "model": options.model_name, "choices": [choice]}
            return f"data: {json.dumps(chunk)}\n\n"

        async def events():
            try:
                async for piece in _events():
                    yield piece
            finally:  # the client went away, or the stream ended: a job still decoding stops at its next token
                task.cancel()

        async def _events():
            if chat:
                for index in range(len(prompts) * body.n):
                    yield event(index, None, None, first=True)
            while (item := await pieces.get()) is not None:
                yield event(item[0], item[1], None)
            try:
                rows = task.result()
            except ApiError as exc:
                yield f"data: {json.dumps({'error': {'message': exc.message, 'type': exc.kind}})}\n\n"
                return
            except Exception as exc:  # noqa: BLE001 -- the stream has started: the error goes in it, logged here
                reporter.warn("".join(traceback.format_exception(exc)).rstrip())
                yield f"data: {json.dumps({'error': {'message': 'internal server error', 'type': 'server_error'}})}\n\n"
                return
            for index, row in enumerate(rows):
                yield event(index, None if chat else "", row.finish)
            request.state.tokens = usage(prompts, rows)["total_tokens"]
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def pairs_of(body: ClassifyRequest, texts: list[str]) -> list[str] | None:
        """A pair classifier's second texts: text_pair, one per input (a string for a string input); None for
        a classifier of single texts, which refuses a text_pair."""
        if not reads_pairs(engine.checkpoint.head):
            if body.text_pair is not None:
                raise ApiError(400, "text_pair: this server's classifier reads single texts; send input alone",
                               "text_pair")
            return None
        if body.text_pair is None:
            raise ApiError(400, "text_pair: required: this server's classifier reads pairs of texts (input and "
                           "text_pair)", "text_pair")
        pairs = [body.text_pair] if isinstance(body.text_pair, str) else body.text_pair
        if isinstance(body.text_pair, str) != isinstance(body.input, str) or len(pairs) != len(texts):
            raise ApiError(400, f"text_pair: give one second text per input ({len(texts)}), a string for a string "
                           "input", "text_pair")
        if any(not text.strip() for text in pairs):
            raise ApiError(400, "text_pair: every text must be non-empty", "text_pair")
        return pairs

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request):
        need(CLASSIFY, "/v1/classify")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts or any(not text.strip() for text in texts):
            raise ApiError(400, "input: every text must be non-empty", "input")
        pairs = pairs_of(body, texts)
        predictions = await run("classify", (texts, pairs))
        tokens = sum(len(ids) for ids in engine.tokenizer.encode_batch(texts + (pairs or [])))
        request.state.tokens = tokens
        return {"object": "list", "model": options.model_name, "labels": engine.checkpoint.labels,
                "data": [{"index": i, **p.to_dict()} for i, p in enumerate(predictions)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/fill-mask")
    async def fill(body: FillMaskRequest, request: Request):
        need(FILL_MASK, "/v1/fill-mask")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(400, "input: give at least one text with [MASK]", "input")
        results = await run("fill-mask", (texts, body.top_k))
        tokens = sum(len(ids) for ids in engine.tokenizer.encode_batch(texts))
        request.state.tokens = tokens
        return {"object": "list", "model": options.model_name,
                "data": [{"index": i, "masks": [[c.to_dict() for c in mask] for mask in masks]}
                         for i, masks in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/qa")
    async def answer(body: QARequest, request: Request):
        need(QA, "/v1/qa")
        for name in ("question", "context"):
            if not getattr(body, name).strip():
                raise ApiError(400, f"{name}: must be non-empty", name)
        found = (await run("qa", ([body.question], [body.context])))[0]
        tokens = sum(len(ids) for ids in engine.tokenizer.encode_batch([body.question, body.context]))
        request.state.tokens = tokens
        return {"object": "answer", "model": options.model_name, **found.to_dict(),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        specials, tokenizer = engine.tokenizer.specials, engine.tokenizer
        return {"eos_token": tokenizer.id_to_piece(specials.eos),
                "bos_token": None if specials.bos is None else tokenizer.id_to_piece(specials.bos),
                "pad_token": tokenizer.id_to_piece(specials.pad), "eos_token_id": specials.eos,
                "model_max_length": engine.block_size - 1, "vocab_size": engine.tokenizer.vocab_size}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        # A special token's own text ("</s>") is that token: lm-eval's remote tokenizer finds the ids this way.
        special = {engine.tokenizer.id_to_piece(i): i for i in engine.tokenizer.specials.ids}
        tokens = [special[body.prompt]] if body.prompt in special else engine.tokenizer.encode(body.prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.block_size - 1}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if any(not 0 <= t < engine.tokenizer.vocab_size for t in body.tokens):
            raise ApiError(400, f"tokens: ids must be in [0, {engine.tokenizer.vocab_size})", "tokens")
        return {"prompt": engine.tokenizer.decode(body.tokens)}

    return app
