"""``lmkit serve`` under load: benchmarks/serve_load.py's mixed load, smaller, against the real command (no error, no
lost request, every slot freed, /metrics counting what the clients sent, SIGTERM draining), and the faults that load
found: an unknown path or method answered outside the JSON error shape, and a stream refused as busy inside its 200."""

import asyncio
import importlib.util
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("prometheus_client")

from tests.serving.test_operations import serving, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_mixed_load_with_disconnects_loses_nothing_frees_every_slot_and_drains_on_sigterm(gpt):
    bench = load_benchmark()
    served = bench.start(str(gpt), "--no-compile", "--max-tokens", "128", "--max-queue", "1024")
    try:
        load = bench.mixed(served, total=300, clients=32, seed=1, max_tokens=128)
        storm = bench.disconnects(served, rows=8)
        drained = bench.sigterm(served, in_flight=8, grace=10.0)
    finally:
        if served.process.poll() is None:
            served.process.kill()
        served.log.unlink(missing_ok=True)

    assert load["requests"] == 300 and load["lost"] == 0 and load["connection_errors"] == 0
    assert load["errors"] == 0 and load["server_errors"] == 0, load["problems"]
    assert set(load["kinds"]) == {*bench.MIX, "poll /metrics", "poll /health/ready"}  # every kind was sent
    assert sum(load["refusals"].values()) == load["kinds"]["bad"]["count"]  # each with its 4xx and message
    assert load["kinds"]["disconnect"]["closed_mid_stream"] > 0
    after = load["after"]
    assert after["running_rows"] == 0 and after["queue_length"] == 0 and after["kv_slots"] == 32
    assert after["health_running"] == 0 and after["health_queued"] == 0
    assert after["metrics_match"], after["metrics_differences"]
    assert after["requests_by_route_status"]["/v1/completions 200"] > 100
    assert after["prompt_tokens"]["server"] == after["prompt_tokens"]["clients"] > 0
    assert after["generation_tokens"]["server"] == after["generation_tokens"]["clients"] > 0
    # Streams closed after their first text end on the server: the same streams (prompts, seeds) read to the end
    # made whole_tokens, and a stream that ran on to its end would count its tokens. (Its job is then cancelled:
    # test_shared; and its slot freed at the next step: test_engine.)
    assert storm["closed_mid_stream"] > 0 and storm["errors"] == 0 and storm["running_after"] == 0
    assert storm["tokens_counted_for_closed"] < storm["whole_tokens"] / 2, storm
    assert drained["unfinished_at_sigterm"] > 0 and drained["finished_whole"] == drained["in_flight"], drained
    assert drained["exit_code"] == 143 and not drained["log_has_traceback"]


@pytest.fixture
def full_queue_service(gpt):
    """An in-process server of the tiny GPT whose queue holds 2 jobs, its model loaded, its engine not started."""
    from lmkit.config import resolve
    from lmkit.serving.config import ServeConfig
    from lmkit.stages.serve import prepare

    return prepare(resolve(ServeConfig, {}, {"checkpoint": str(gpt), "compile": False, "max_queue": 2,
                                             "max_batch": 1}))


def test_an_unknown_path_or_method_is_answered_as_a_json_error(full_queue_service):
    with serving(full_queue_service) as http:
        wait_until(lambda: http.request("GET", "/health/ready")[0] == 200)
        status, body, _ = http.request("POST", "/v1/no-such-route", {"prompt": "x"})
        assert status == 404 and body["error"] == {"message": "POST /v1/no-such-route: Not Found",
                                                   "type": "invalid_request_error", "param": None, "code": 404}
        status, body, headers = http.request("GET", "/v1/completions")
        assert status == 405 and body["error"]["message"] == "GET /v1/completions: Method Not Allowed"
        assert headers["allow"] == "POST"
        assert http.request("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})[0] == 200  # still serving


def test_a_stream_past_the_queue_check_is_decoded_even_if_the_queue_fills_before_it_starts(full_queue_service):
    """A stream is refused with 503 before it begins, or decoded: the queue filling between the check and the
    stream's first step (other requests arriving) must not end its 200 with a "busy" error event."""
    from lmkit.serving.app import Call
    from lmkit.serving.completions import completions
    from lmkit.serving.engine import CALL
    from lmkit.serving.errors import ApiError
    from lmkit.serving.protocol import CompletionRequest
    from lmkit.serving.streaming import DONE
    from lmkit.serving.timing import Timing

    service = full_queue_service
    service.load()
    engine = service.server.engine
    release, holding = threading.Event(), threading.Event()

    def slow():
        holding.set()
        release.wait(30)

    def call():
        return Call(service.server, SimpleNamespace(state=SimpleNamespace(timing=Timing())))

    async def main():
        held = asyncio.ensure_future(engine.submit(CALL, slow))
        await asyncio.get_running_loop().run_in_executor(None, holding.wait, 30)
        body = CompletionRequest(prompt="The for statement", max_tokens=4, temperature=0, stream=True)
        response = await completions(body, call())  # the queue is empty: the stream is admitted
        queued = [asyncio.ensure_future(engine.submit(CALL, lambda: None)) for _ in range(2)]
        while engine.pending < engine.max_queue:  # other requests fill the queue before the stream starts
            await asyncio.sleep(0.001)
        with pytest.raises(ApiError) as refused:  # a new stream is refused now, before it begins ...
            await completions(body, call())
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        asyncio.get_running_loop().call_later(0.1, release.set)
        chunks = [chunk async for chunk in response.body_iterator]  # ... the admitted one is decoded
        await asyncio.gather(held, *queued)
        return chunks

    engine.start()
    try:
        chunks = asyncio.run(main())
    finally:
        release.set()
        engine.stop()
    assert chunks[-1] == DONE and not any('"error"' in chunk for chunk in chunks), chunks
    assert any('"timings"' in chunk for chunk in chunks)
