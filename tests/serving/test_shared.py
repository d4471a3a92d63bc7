"""The server's shared concerns, each alone and in-process (no model, no socket): the Guard's limits and API
key, the JSON errors, the relay that streams a job's pieces, and the engine's queue."""

import asyncio
import json

import pytest

pytest.importorskip("fastapi")

from fastapi import FastAPI  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from lmkit.errors import UserError  # noqa: E402
from lmkit.serving import errors  # noqa: E402
from lmkit.serving.config import ServeOptions  # noqa: E402
from lmkit.serving.engine import CALL, Engine, QueueFull  # noqa: E402
from lmkit.serving.guard import Guard  # noqa: E402
from lmkit.serving.streaming import Finished, event, relay  # noqa: E402


def request(app, path: str, body: bytes = b"", headers: dict | None = None, chunks: list[bytes] | None = None):
    """Drive an ASGI app with one POST as a server would; returns (status, the JSON body)."""
    messages = [{"type": "http.request", "body": part, "more_body": i < len(chunks) - 1}
                for i, part in enumerate(chunks)] if chunks is not None else [
        {"type": "http.request", "body": body, "more_body": False}]
    raw = {k.lower().encode(): v.encode() for k, v in (headers or {}).items()}
    if chunks is None:
        raw[b"content-length"] = str(len(body)).encode()
    raw[b"content-type"] = b"application/json"
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": list(raw.items()), "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "root_path": "", "app": app}
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except RuntimeError:  # Starlette re-raises a bug after its 500 is sent, for the server's log (uvicorn's)
        assert any(m["type"] == "http.response.start" for m in sent), "the bug escaped without an answer"
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(payload) if payload else None


class Echo(BaseModel):
    text: str
    count: int = 1


def demo_app() -> FastAPI:
    app = FastAPI()
    errors.install(app)

    @app.post("/echo")
    async def echo(body: Echo):
        if body.text == "user":
            raise UserError("text: a user's mistake")
        if body.text == "api":
            raise errors.ApiError(409, "text: taken", "text", headers={"Retry-After": "2"})
        if body.text == "bug":
            raise RuntimeError("/secret/path.py exploded")
        return {"text": body.text * body.count}

    return app


def test_errors_are_json_naming_the_field_and_a_bug_hides_its_traceback():
    app = demo_app()
    assert request(app, "/echo", b'{"text": "ab", "count": 2}') == (200, {"text": "abab"})
    status, body = request(app, "/echo", b'{"count": "many"}')
    assert status == 400 and body["error"]["param"] == "text" and body["error"]["code"] == 400
    assert request(app, "/echo", b'{"text": ')[1]["error"]["message"].startswith("body: not valid JSON")
    assert request(app, "/echo", b'{"text": "user"}') == (400, {"error": {"message": "text: a user's mistake",
                                                                      "type": "invalid_request_error", "param": None,
                                                                      "code": 400}})
    assert request(app, "/echo", b'{"text": "api"}')[0] == 409
    status, body = request(app, "/echo", b'{"text": "bug"}')
    assert status == 500 and body["error"] == {"message": "internal server error", "type": "server_error",
                                               "param": None, "code": 500}


def test_the_guard_limits_bodies_and_checks_the_api_key():
    options = ServeOptions(model_name="m", api_key="sesame", max_body=64, log_requests=False)
    guarded = Guard(demo_app(), options)
    key = {"Authorization": "Bearer sesame"}
    assert request(guarded, "/echo", b'{"text": "a"}', key) == (200, {"text": "a"})  # the positive control
    status, body = request(guarded, "/echo", b'{"text": "a"}', {"Authorization": "Bearer wrong"})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert request(guarded, "/echo", b'{"text": "a"}')[0] == 401
    big = json.dumps({"text": "x" * 100}).encode()
    status, body = request(guarded, "/echo", big, key)
    assert status == 413 and "larger than the server's limit of 64 bytes" in body["error"]["message"]
    status, body = request(guarded, "/echo", headers=key, chunks=[big[:50], big[50:]])  # no Content-Length
    assert status == 413
    assert request(guarded, "/echo", headers=key, chunks=[b'{"text"', b': "b"}']) == (200, {"text": "b"})


def test_relay_yields_pieces_as_they_come_then_the_result_or_the_error():
    async def job(emit, fail=False):
        for piece in ("a", "b"):
            emit(piece)
            await asyncio.sleep(0)
        if fail:
            raise ValueError("boom")
        return "done"

    async def collect(**kwargs):
        return [item async for item in relay(lambda emit: job(emit, **kwargs))]

    items = asyncio.run(collect())
    assert items[:2] == ["a", "b"] and items[2] == Finished("done")
    failed = asyncio.run(collect(fail=True))
    assert failed[:2] == ["a", "b"] and isinstance(failed[2].error, ValueError)
    assert event({"x": 1}) == 'data: {"x": 1}\n\n'


def test_a_consumer_that_stops_early_cancels_the_job():
    cancelled = []

    async def endless(emit):
        try:
            while True:
                emit("piece")
                await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def first_then_leave():
        stream = relay(endless)
        assert await anext(stream) == "piece"
        await stream.aclose()  # the client went away
        await asyncio.sleep(0.01)

    asyncio.run(first_then_leave())
    assert cancelled == [True]


def test_the_engine_runs_calls_on_its_worker_and_refuses_past_its_queue():
    engine = Engine(max_queue=1)

    async def main():
        engine.start()
        try:
            assert await engine.submit(CALL, lambda: 6 * 7) == 42
            with pytest.raises(ValueError, match="bad job"):
                await engine.submit(CALL, lambda: (_ for _ in ()).throw(ValueError("bad job")))
            slow = asyncio.ensure_future(engine.submit(CALL, lambda: __import__("time").sleep(0.3)))
            await asyncio.sleep(0.1)  # the worker holds the slow call; one more waits in the queue
            waiting = asyncio.ensure_future(engine.submit(CALL, lambda: 1))
            await asyncio.sleep(0.01)
            with pytest.raises(QueueFull):
                await engine.submit(CALL, lambda: 2)
            assert await waiting == 1 and await slow is None
            with pytest.raises(asyncio.TimeoutError):
                await engine.submit(CALL, lambda: __import__("time").sleep(0.2), timeout=0.01)
        finally:
            engine.stop()

    asyncio.run(main())
