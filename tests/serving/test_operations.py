"""``lmkit serve``'s operations: /metrics read with prometheus_client's own parser after real requests, the health
probes (503 before the model is ready, then 200), the timings of every answer, what the API key guards, the warning
for an open bind, and health and metrics answering while the queue is full."""

import asyncio
import contextlib
import json
import re
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.conftest import invoke_lmkit, run_lmkit  # noqa: E402
from tests.serving.test_server import Server, free_port  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
TIMINGS = {"first_token_ms", "decode_ms", "per_token_ms", "total_ms", "prompt_tokens", "completion_tokens"}


@pytest.fixture(scope="module")
def keyed(gpt):
    server = Server(gpt, "--max-tokens", "64", "--api-key", KEY)
    yield server
    server.stop()


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics: {(name, labels): value}."""
    status, text, headers = server.request("GET", "/metrics", headers=AUTH)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def events(payload: bytes) -> list[dict]:
    """The JSON events of a server-sent event stream, [DONE] left out."""
    found = [line[len("data: "):] for line in payload.decode().split("\n\n") if line.startswith("data: ")]
    assert found[-1] == "[DONE]"
    return [json.loads(item) for item in found[:-1]]


def test_metrics_count_real_requests_tokens_and_first_token_times(keyed):
    before = scrape(keyed)
    status, plain, _ = keyed.request("POST", "/v1/completions", {"prompt": "The for statement", "max_tokens": 8,
                                                                 "temperature": 0}, AUTH)
    assert status == 200
    status, streamed, _ = keyed.request("POST", "/v1/completions", {"prompt": "A module is", "max_tokens": 6,
                                                                    "temperature": 0, "stream": True}, AUTH)
    assert status == 200
    last = events(streamed)[-1]["timings"]
    assert keyed.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}, AUTH)[0] == 400
    assert keyed.request("POST", "/v1/completions", {"prompt": "x"})[0] == 401  # no key: refused, and counted
    after = scrape(keyed)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/completions"
    assert grew("lmkit_requests_total", route=route, status="200") == 2
    assert grew("lmkit_requests_total", route=route, status="400") == 1
    assert grew("lmkit_requests_total", route=route, status="401") == 1
    assert grew("lmkit_request_duration_seconds_count", route=route) == 4
    assert grew("lmkit_prompt_tokens_total") == plain["usage"]["prompt_tokens"] + last["prompt_tokens"]
    assert grew("lmkit_generation_tokens_total") == plain["usage"]["completion_tokens"] + last["completion_tokens"]
    assert last["completion_tokens"] > 0 and grew("lmkit_generation_tokens_total") > 0
    assert grew("lmkit_time_to_first_token_seconds_count") == 2  # streamed or not
    assert grew("lmkit_time_per_output_token_seconds_count") >= 1
    assert value(after, "lmkit_queue_length") == 0 and value(after, "lmkit_ready") == 1
    # The engine retires a finished row at its next step, which may come just after the answer.
    wait_until(lambda: value(scrape(keyed), "lmkit_running_rows") == 0, seconds=10)
    assert ("lmkit_prefix_cache_hits_total", frozenset()) in after and ("lmkit_prefix_cache_lookups_total",
                                                                         frozenset()) in after
    status, _, _ = keyed.request("GET", "/no/such/path", headers=AUTH)
    assert status == 404 and value(scrape(keyed), "lmkit_requests_total", route="other", status="404") >= 1


def test_every_model_answer_carries_its_timings(keyed):
    status, body, _ = keyed.request("POST", "/v1/completions", {"prompt": "The for statement", "max_tokens": 8,
                                                                "temperature": 0}, AUTH)
    timings = body["timings"]
    assert set(timings) == TIMINGS
    assert timings["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert timings["completion_tokens"] == body["usage"]["completion_tokens"]
    assert 0 < timings["first_token_ms"] <= timings["total_ms"] and timings["decode_ms"] >= 0
    status, body, _ = keyed.request("POST", "/v1/completions", {"prompt": "The for", "max_tokens": 0, "echo": True,
                                                                "logprobs": 1}, AUTH)
    timings = body["timings"]  # scoring only: no decode
    assert set(timings) == TIMINGS and timings["first_token_ms"] is None and timings["completion_tokens"] == 0
    assert timings["total_ms"] > 0
    status, payload, _ = keyed.request("POST", "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 4,
                                                                   "stream": True, "temperature": 0}, AUTH)
    chunks = events(payload)
    assert [("timings" in chunk) for chunk in chunks][-1] and sum("timings" in chunk for chunk in chunks) == 1
    assert set(chunks[-1]["timings"]) == TIMINGS


def test_the_api_key_guards_the_api_and_metrics_and_leaves_health_and_the_page_open(keyed):
    for path in ("/health", "/health/live", "/health/ready", "/"):
        status, _, _ = keyed.request("GET", path)
        assert status == 200, path
    for method, path, body in (("GET", "/metrics", None), ("GET", "/v1/models", None), ("GET", "/tokenizer_info", None),
                               ("POST", "/tokenize", {"prompt": "x"}), ("POST", "/v1/completions", {"prompt": "x"})):
        status, answer, _ = keyed.request(method, path, body)
        assert status == 401 and answer["error"]["type"] == "authentication_error", path
        assert keyed.request(method, path, body, {"Authorization": "Bearer wrong"})[0] == 401, path
        assert keyed.request(method, path, body, AUTH)[0] == 200, path  # the positive control
    # ... and `lmkit serve --help` says so.
    help_text = " ".join(invoke_lmkit("serve", "--help", env={"COLUMNS": "200"}, check=True).stdout.split())
    for said in ("on the API (/v1/*, the tokenizer endpoints) and /metrics", "/health, /health/live, /health/ready "
                 "and the chat page (/) stay open"):
        assert said in re.sub(r"[│|] ", "", help_text), said


def test_health_says_live_at_once_and_ready_once_the_model_is(keyed):
    assert keyed.request("GET", "/health/live")[1] == {"status": "live"}
    assert keyed.request("GET", "/health/ready")[1] == {"status": "ready"}
    status, body, _ = keyed.request("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["kind"] == "text" and body["max_tokens"] == 64


def test_binding_beyond_the_loopback_without_a_key_warns_once(gpt):
    from lmkit.serving.server import loopback

    assert all(map(loopback, ("127.0.0.1", "127.0.0.2", "::1", "localhost")))
    assert not any(map(loopback, ("0.0.0.0", "::", "192.168.1.7", "example.org")))
    warning = "--host 0.0.0.0: listening beyond this machine without an API key"
    open_server = Server(gpt, "--host", "0.0.0.0")
    _, err = open_server.stop()
    assert err.count(warning) == 1 and len(next(line for line in err.splitlines() if warning in line)) < 200
    assert not re.search(r"GET /health\S* \d+ tokens=", err)  # the probes that waited for it are not logged
    keyed_server = Server(gpt, "--host", "0.0.0.0", env={"LMKIT_API_KEY": KEY})
    _, err = keyed_server.stop()
    assert warning not in err and "API key required" in err


def test_a_model_that_fails_to_load_stops_the_server_with_its_message(gpt):
    result = run_lmkit("serve", str(gpt), "--port", str(free_port()), "--device", "nonsense", "--no-compile",
                       timeout=120)
    assert result.returncode == 1 and "--device: 'nonsense' is not a device" in result.stderr
    assert "Traceback" not in result.stderr


# -- in-process: the lifecycle with a model that loads when the test says, and a worker the test holds ---------------

class Local:
    """A server in this process, asked as test_server's Server is."""

    request = Server.request

    def __init__(self, port: int, failures: list):
        self.port, self.failures = port, failures


@contextlib.contextmanager
def serving(service):
    """``service`` under uvicorn on 127.0.0.1 in a thread, its model loading once the socket listens (as serve's)."""
    import uvicorn

    port = free_port()
    web = uvicorn.Server(uvicorn.Config(service.asgi, host="127.0.0.1", port=port, log_level="warning",
                                        lifespan="off"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started and time.monotonic() < deadline:
        time.sleep(0.02)
    failures = []
    service.start(on_failure=failures.append)
    try:
        yield Local(port, failures)
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        service.stop()


def wait_until(condition, seconds=60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class FakeEngine:
    pending, running, started = 0, 0, False

    def __init__(self, ready=None):
        if ready is not None:
            self.ready = ready

    def start(self):
        self.started = True

    def stop(self):
        pass


def test_ready_is_503_while_loading_and_warming_and_200_after():
    from fastapi import FastAPI

    from lmkit.serving.config import ServeOptions
    from lmkit.serving.lifecycle import Service

    loaded, warm = threading.Event(), threading.Event()
    model_app = FastAPI()
    model_app.post("/v1/completions")(lambda: {"text": "hi"})
    engine = FakeEngine(ready=False)  # an engine that says when it is ready (one that does not: see below)

    def load(service):
        loaded.wait(30)
        service.warming()
        warm.wait(30)
        return model_app, SimpleNamespace(engine=engine)

    service = Service(ServeOptions(model_name="m", log_requests=False), "text", load, routes=("/v1/completions",))
    with serving(service) as http:
        assert http.request("GET", "/health/live")[:2] == (200, {"status": "live"})
        assert http.request("GET", "/health/ready")[:2] == (503, {"status": "loading"})
        status, body, _ = http.request("GET", "/health")
        assert status == 503 and body["status"] == "loading" and body["kind"] == "text"
        status, body, headers = http.request("POST", "/v1/completions", {"prompt": "x"})
        assert status == 503 and body["error"]["type"] == "server_loading" and headers["retry-after"] == "1"
        assert http.request("GET", "/")[0] == 200 and http.request("GET", "/metrics")[0] == 200
        loaded.set()
        wait_until(lambda: http.request("GET", "/health/ready")[1] == {"status": "warming"})
        warm.set()
        wait_until(lambda: engine.started)  # loaded and started, but the engine is still warming up
        assert http.request("GET", "/health/ready")[:2] == (503, {"status": "warming"})
        assert http.request("POST", "/v1/completions", {})[:2] == (200, {"text": "hi"})  # queued, not refused
        engine.ready = True
        assert http.request("GET", "/health/ready")[:2] == (200, {"status": "ready"})
        assert http.request("GET", "/health")[0] == 200
        assert "lmkit_ready 1.0" in http.request("GET", "/metrics")[1].decode()
    plain = Service(ServeOptions(model_name="m", log_requests=False), "text",
                    lambda service: (model_app, SimpleNamespace(engine=FakeEngine())), routes=())
    with serving(plain) as http:  # an engine without a `ready`: ready once started
        wait_until(lambda: http.request("GET", "/health/ready")[0] == 200)


def test_a_load_that_fails_is_reported_and_the_server_is_never_ready():
    from lmkit.errors import UserError
    from lmkit.serving.config import ServeOptions
    from lmkit.serving.lifecycle import Service

    def load(service):
        raise UserError("--device: no such device")

    service = Service(ServeOptions(model_name="m", log_requests=False), "text", load, routes=())
    with serving(service) as http:
        wait_until(lambda: http.failures)
        assert isinstance(service.error, UserError) and http.failures == [service.error]
        assert http.request("GET", "/health/ready")[:2] == (503, {"status": "failed"})


def test_metrics_and_health_answer_while_a_slow_job_holds_the_worker_and_the_queue_is_full(gpt):
    from lmkit.config import resolve
    from lmkit.serving.config import ServeConfig
    from lmkit.serving.engine import CALL
    from lmkit.stages.serve import prepare

    config = resolve(ServeConfig, {}, {"checkpoint": str(gpt), "compile": False, "max_queue": 2, "max_batch": 1})
    service = prepare(config)
    release, holding = threading.Event(), threading.Event()

    def slow():
        holding.set()
        release.wait(60)

    async def occupy(engine):  # the slow job on the worker, then the queue filled behind it
        first = asyncio.ensure_future(engine.submit(CALL, slow))
        await asyncio.get_running_loop().run_in_executor(None, holding.wait, 30)
        queued = [asyncio.ensure_future(engine.submit(CALL, lambda: None)) for _ in range(2)]
        await asyncio.gather(first, *queued)

    with serving(service) as http:
        wait_until(lambda: http.request("GET", "/health/ready")[0] == 200)
        worker = threading.Thread(target=asyncio.run, args=(occupy(service.engine),), daemon=True)
        worker.start()
        try:
            wait_until(lambda: service.engine.pending == 2)
            status, body, headers = http.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
            assert status == 503 and headers["retry-after"] == "1"  # the API is full ...
            status, text, _ = http.request("GET", "/metrics", timeout=5)  # ... operations still answer
            assert status == 200 and re.search(r"^lmkit_queue_length 2\.0$", text.decode(), re.MULTILINE)
            for path in ("/health/live", "/health/ready"):
                assert http.request("GET", path, timeout=5)[0] == 200, path
            status, body, _ = http.request("GET", "/health", timeout=5)
            assert status == 200 and body["queued"] == 2
        finally:
            release.set()
            worker.join(timeout=30)
        status, body, _ = http.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 200 and body["timings"]["completion_tokens"] == body["usage"]["completion_tokens"]


def test_a_client_that_leaves_before_its_json_answer_frees_its_rows_and_is_counted_499(gpt):
    import socket

    from lmkit.config import resolve
    from lmkit.serving.config import ServeConfig
    from lmkit.stages.serve import prepare

    config = resolve(ServeConfig, {}, {"checkpoint": str(gpt), "compile": False, "max_batch": 2})
    service = prepare(config)
    with serving(service) as http:
        wait_until(lambda: http.request("GET", "/health/ready")[0] == 200)
        scheduler, steps = service.engine.scheduler, []
        scheduler.stops = frozenset()  # no end-of-text: the request decodes to its max_tokens unless cancelled
        step = scheduler.step

        def slow_step():  # a step long enough for the disconnect to reach the server while the row decodes
            steps.append(1)
            time.sleep(0.01)
            step()
        scheduler.step = slow_step
        max_tokens = http.request("GET", "/v1/models")[1]["data"][0]["max_model_len"] - 4
        body = json.dumps({"prompt": "x", "max_tokens": max_tokens, "temperature": 0}).encode()
        client = socket.create_connection(("127.0.0.1", http.port))
        client.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: service.engine.running == 1)
        client.close()  # gone before its JSON answer
        wait_until(lambda: service.engine.running == 0)
        assert len(steps) < max_tokens // 2  # it left the batch long before its last token
        assert value(scrape(http), "lmkit_requests_total", route="/v1/completions", status="499") == 1
        status, answer, _ = http.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 3})
        assert status == 200 and answer["usage"]["completion_tokens"] == 3  # the engine serves on
