"""``GET /metrics`` of ``lmkit serve``: Prometheus' text format, written by ``prometheus_client`` from a registry of
the app's own (not the process-wide one, so that every app counts alone).

What a request did is counted once it has answered, by :class:`Metrics` as the outermost ASGI layer (refusals of
the Guard included): its route and status, its latency, and what timing.py noted (tokens, time to first token,
time per output token). What the engine is doing (queue, running rows, KV slots, the prefix cache's hits) is read
from it at scrape time. Names follow vLLM's (``vllm:time_to_first_token_seconds``, ...) with an ``lmkit_`` prefix.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from starlette.responses import Response

from lmkit.serving.timing import Timing

OTHER = "other"  # the route label of a path the server does not serve (bounded labels: no path from a client)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
PER_TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class EngineCollector(Collector):
    """The engine's state at scrape time; an engine that has no such attribute (yet) reads 0."""

    def __init__(self, engine: Callable[[], Any], ready: Callable[[], bool]):
        self.engine, self.ready = engine, ready

    def collect(self) -> Iterable:
        engine = self.engine()

        def read(name: str) -> float:
            return float(getattr(engine, name, 0) or 0) if engine is not None else 0.0

        yield GaugeMetricFamily("lmkit_ready", "1 once the model is loaded and warmed up (/health/ready is 200)",
                                value=float(self.ready()))
        yield GaugeMetricFamily("lmkit_queue_length", "Requests waiting for the model's worker", value=read("pending"))
        yield GaugeMetricFamily("lmkit_running_rows", "Completion rows decoding now", value=read("running"))
        yield GaugeMetricFamily("lmkit_kv_slots", "KV-cache slots of the engine (0: it has none)", value=read("slots"))
        yield CounterMetricFamily("lmkit_prefix_cache_hits", "Prompt tokens whose KV the prefix cache supplied",
                                  value=read("prefix_hits"))
        yield CounterMetricFamily("lmkit_prefix_cache_lookups", "Prompt tokens looked up in the prefix cache",
                                  value=read("prefix_lookups"))


class Metrics:
    """ASGI middleware counting every answer of ``app``, and the registry ``GET /metrics`` writes out.

    ``routes``: the paths counted under their own name (any other is ``other``); ``engine`` and ``ready`` say,
    when scraped, which engine serves (None while the model loads) and whether the server is ready."""

    def __init__(self, app, routes: Iterable[str], engine: Callable[[], Any], ready: Callable[[], bool]):
        self.app, self.routes = app, frozenset(routes)
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("lmkit_requests", "HTTP requests answered, by route and status",
                                ("route", "status"), registry=self.registry)
        self.latency = Histogram("lmkit_request_duration_seconds", "Time to answer a request (a stream: its "
                                 "whole length), by route", ("route",), buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.prompt_tokens = Counter("lmkit_prompt_tokens", "Prompt (input) tokens of answered requests",
                                     registry=self.registry)
        self.generated_tokens = Counter("lmkit_generation_tokens", "Tokens generated", registry=self.registry)
        self.first_token = Histogram("lmkit_time_to_first_token_seconds", "From a completion request's arrival to "
                                     "its first generated text, queueing and prefill included",
                                     buckets=FIRST_TOKEN_BUCKETS, registry=self.registry)
        self.per_token = Histogram("lmkit_time_per_output_token_seconds", "Decoding time per token after the "
                                   "first, per completion request", buckets=PER_TOKEN_BUCKETS, registry=self.registry)
        self.registry.register(EngineCollector(engine, ready))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {"code": 500}
        state = scope.setdefault("state", {})

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.observe(scope["path"], status["code"], time.perf_counter() - started, state.get("timing"))

    def observe(self, path: str, status: int, seconds: float, timing: Timing | None) -> None:
        route = path if path in self.routes else OTHER
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if timing is None:
            return
        self.prompt_tokens.inc(timing.prompt_tokens)
        self.generated_tokens.inc(timing.completion_tokens)
        if timing.last_token is not None:  # a decode ran (not a max_tokens 0 scoring request)
            self.first_token.observe(timing.time_to_first_token)
            if timing.time_per_output_token is not None:
                self.per_token.observe(timing.time_per_output_token)

    def response(self) -> Response:
        """The answer of ``GET /metrics``."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
