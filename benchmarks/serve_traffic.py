"""The requests of benchmarks/serve_load.py: what its clients send to ``lmkit serve`` (a mixed plan of completions,
chat, scoring, tokenizer calls, disconnects and bad requests), and how each answer is read and checked: a stream to
its [DONE], a refusal for its 4xx and error message, a completion for its choices, finish reasons, token budget and
stop strings. Standard library only (http.client), so that the clients measure the server, not a client library."""

from __future__ import annotations

import collections
import http.client
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from serve import SENTENCES

# The routes /metrics names (any other path is "other"); what the load sends goes to these.
ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize", "/tokenizer_info",
                    "/v1/models", "/metrics", "/health", "/health/live", "/health/ready"})
MAX_BODY = 65536  # the server's --max-body here, so that an oversized body is cheap to send
# The sampling settings of the load's completions (one drawn per request): what different clients ask at once.
SAMPLINGS = [{"temperature": 0}, {"temperature": 0.8, "top_k": 40}, {"temperature": 1.0, "top_p": 0.9},
             {"temperature": 0.7, "min_p": 0.05, "repetition_penalty": 1.2}, {"temperature": 0.9, "stop": ["\n", "."]},
             {"temperature": 0.6, "top_k": 10, "top_p": 0.8, "stop": " the"}, {"temperature": 1.2}]
# Kinds of request and their share of the load (of 100).
MIX = {"complete": 20, "stream": 20, "samples": 8, "score": 10, "tokenize": 8, "detokenize": 6, "models": 4,
       "disconnect": 10, "abandon": 4, "bad": 10}
CHAT_MIX = {"chat": 22, "chat stream": 22, "chat disconnect": 12, "complete": 10, "stream": 10, "tokenize": 6,
            "models": 4, "bad": 14}
STREAMED = ("stream", "disconnect", "abandon", "chat stream", "chat disconnect")
CLIENT_TIMEOUT = 120.0  # seconds a client waits for an answer; a request not answered by then is lost


@dataclass
class Request:
    """One request of the load: what to send, and what a whole answer looks like."""

    kind: str
    path: str
    body: Any = None              # JSON, or bytes sent as they are
    method: str = "POST"
    expect: int = 200             # a bad request's 4xx
    choices: int = 0              # completions: the choices a whole answer has
    max_tokens: int = 0           # completions: per choice at most
    stops: tuple[str, ...] = ()   # no choice's text holds one
    why: str = ""                 # a bad request: what is wrong with it

    @property
    def route(self) -> str:
        return self.path if self.path in ROUTES else "other"


@dataclass
class Answer:
    request: Request
    status: int | None = None     # None: no answer (a connection error or the client's timeout)
    seconds: float = 0.0
    first: float | None = None    # streams: seconds to the first text
    problem: str | None = None    # what broke a promise (a wrong status, a partial or malformed answer)
    prompt_tokens: int = 0        # what the server said it read and generated (usage, or a stream's timings)
    completion_tokens: int = 0
    closed_early: bool = False    # a disconnect that left before [DONE]
    retry_after: str | None = None
    text: str | None = None       # greedy completions: for the repeat check


@dataclass
class Tally:
    """Every answer a server gave, by (route, status): what its /metrics must count."""

    counts: collections.Counter = field(default_factory=collections.Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, route: str, status: int) -> None:
        with self.lock:
            self.counts[(route, str(status))] += 1

    def snapshot(self) -> collections.Counter:
        with self.lock:
            return collections.Counter(self.counts)


@dataclass(kw_only=True)
class Target:
    """A server the clients talk to: its port, and the tally of its answers."""

    port: int
    tally: Tally = field(default_factory=Tally)


# -- the requests --------------------------------------------------------------------------------------------------

def prompt_text(rng: random.Random) -> str:
    """0 or 1 sentences, then the beginning of another (short enough for a 128-token context with its completion)."""
    words = rng.choice(SENTENCES).split()
    head = [rng.choice(SENTENCES)] if rng.random() < 0.4 else []
    return " ".join([*head, " ".join(words[:rng.randint(2, len(words) // 2)])])


def bad_requests(max_tokens: int, chat: bool) -> list[Request]:
    """Requests the server must refuse, each with its status (``chat``: of a chat model's)."""
    def bad(why: str, body: Any = None, path: str = "/v1/completions", expect: int = 400, method: str = "POST"):
        return Request("bad", path, body, method=method, expect=expect, why=why)

    return [bad("temperature -1", {"prompt": "x", "temperature": -1}),
            bad("max_tokens of the wrong type", {"prompt": "x", "max_tokens": "lots"}),
            bad("temperature of the wrong type", {"prompt": "x", "temperature": [0.5]}),
            bad("n 0", {"prompt": "x", "n": 0}),
            bad("top_p 0", {"prompt": "x", "top_p": 0}),
            bad("an empty stop string", {"prompt": "x", "stop": [""]}),
            bad("an empty prompt list", {"prompt": []}),
            bad("no prompt", {"max_tokens": 3}),
            bad("token ids outside the vocabulary", {"prompt": [10 ** 9]}),
            bad("max_tokens over --max-tokens", {"prompt": "x", "max_tokens": max_tokens + 1}),
            bad("stream with echo", {"prompt": "x", "stream": True, "echo": True}),
            bad("logprobs 99", {"prompt": "x", "logprobs": 99, "max_tokens": 1}),
            bad("malformed JSON", b'{"prompt": "x",'),
            bad("detokenize a negative id", {"tokens": [-1]}, "/detokenize"),
            bad("tokenize without a prompt", {"text": "x"}, "/tokenize"),
            bad("a body over --max-body", b"x" * (MAX_BODY + 1), expect=413),
            bad("an unknown path", {"prompt": "x"}, "/v1/no-such-route", expect=404),
            bad("GET on a POST route", None, "/v1/completions", expect=405, method="GET"),
            *([bad("no messages", {"messages": []}, "/v1/chat/completions"),
               bad("an unknown role", {"messages": [{"role": "robot", "content": "x"}]}, "/v1/chat/completions"),
               bad("content of the wrong type", {"messages": [{"role": "user", "content": 3}]}, "/v1/chat/completions"),
               bad("chat temperature -1", {"messages": [{"role": "user", "content": "x"}], "temperature": -1},
                   "/v1/chat/completions")]
              if chat else [bad("chat on a text model", {"messages": [{"role": "user", "content": "x"}]},
                                "/v1/chat/completions")])]


def completion(kind: str, rng: random.Random, seed: int) -> Request:
    """A completion request of ``kind``: complete, stream, samples (n > 1), score (echo, max_tokens 0), disconnect."""
    sampling = dict(rng.choice(SAMPLINGS))
    stop = sampling.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if kind == "score":
        body = {"prompt": prompt_text(rng), "max_tokens": 0, "echo": True, "logprobs": rng.choice((0, 1, 3))}
        return Request(kind, "/v1/completions", body, choices=1)
    max_tokens = rng.choice((1, 2, 4, 8, 16, 24, 32, 48, 64)) if kind in ("complete", "stream", "samples") else 64
    body = {"prompt": prompt_text(rng), "max_tokens": max_tokens, **sampling}
    if kind.startswith("chat"):  # a conversation instead of a prompt: one turn, or two with a system prompt
        del body["prompt"]
        turns = [{"role": "user", "content": prompt_text(rng)}]
        if rng.random() < 0.4:
            turns = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is x?"},
                     {"role": "assistant", "content": "A name."}, *turns]
        body["messages"] = turns
    if rng.random() < 0.5 or sampling["temperature"] == 0:
        body["seed"] = seed
    prompts = 1
    if kind == "samples":
        body["n"], body["temperature"] = rng.choice((2, 3, 4)), max(sampling["temperature"], 0.8)
    elif kind in ("complete", "stream", "disconnect") and rng.random() < 0.2:
        body["prompt"], prompts = [body["prompt"], prompt_text(rng)], 2
    elif kind in ("stream", "disconnect") and rng.random() < 0.2:
        body["n"] = 2
    elif kind == "complete" and rng.random() < 0.2:
        body["logprobs"] = rng.choice((0, 2))
    if kind in STREAMED:
        body["stream"] = True
    path = "/v1/chat/completions" if kind.startswith("chat") else "/v1/completions"
    return Request(kind, path, body, choices=prompts * body.get("n", 1), max_tokens=max_tokens, stops=stops)


def plan(total: int, seed: int, vocab_size: int, max_tokens: int, mix: dict[str, int]) -> list[Request]:
    """``total`` requests of ``mix``, in a shuffled order (the same for the same seed)."""
    rng = random.Random(seed)
    kinds = [kind for kind, share in mix.items() for _ in range(share)]
    bads = bad_requests(max_tokens, chat=mix is CHAT_MIX)
    requests = []
    for index in range(total):
        kind = kinds[index % len(kinds)] if total >= len(kinds) else rng.choice(kinds)
        if kind == "bad":
            requests.append(bads[index % len(bads)])
        elif kind == "tokenize":
            requests.append(Request(kind, "/tokenize", {"prompt": prompt_text(rng)}))
        elif kind == "detokenize":
            tokens = [rng.randrange(vocab_size) for _ in range(rng.randint(1, 24))]
            requests.append(Request(kind, "/detokenize", {"tokens": tokens}))
        elif kind == "models":
            requests.append(Request(kind, "/v1/models", method="GET"))
        else:
            requests.append(completion(kind, rng, seed=index))
    rng.shuffle(requests)
    return requests


# -- sending and checking ------------------------------------------------------------------------------------------

def send(served: Target, request: Request, kept: list | None = None) -> Answer:
    """``request`` sent and its answer read (a disconnect: until its first text) and checked. On a connection of its
    own, or on ``kept``'s (a client that keeps its connection alive, as HTTP clients' pools do: ``kept`` holds it
    from one request to the next, and is emptied when the connection is closed)."""
    answer = Answer(request)
    started = time.perf_counter()
    connection = kept[0] if kept else http.client.HTTPConnection("127.0.0.1", served.port, timeout=CLIENT_TIMEOUT)
    keep = kept is not None
    try:
        body = request.body
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        connection.request(request.method, request.path, body=data, headers={"Content-Type": "application/json"})
        if request.kind == "abandon":  # the client leaves before any answer: the server counts a 200 nobody reads
            answer.status, answer.closed_early, keep = 200, True, False
            answer.seconds = time.perf_counter() - started
        else:
            response = connection.getresponse()
            answer.status, answer.retry_after = response.status, response.getheader("Retry-After")
            if response.status == 200 and isinstance(body, dict) and body.get("stream"):
                read_stream(response, answer, started)
                keep = keep and not answer.closed_early
            else:
                payload = response.read()
                answer.seconds = time.perf_counter() - started
                check_plain(answer, payload)
    except (OSError, http.client.HTTPException) as exc:  # a refused or reset connection, or the client's timeout
        answer.status, answer.problem, keep = None, f"{type(exc).__name__}: {exc}", False
        answer.seconds = time.perf_counter() - started
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # an answer of the wrong shape
        answer.problem, keep = f"a malformed answer: {type(exc).__name__}: {exc}", False
    finally:
        if keep:
            kept[:] = [connection]
        else:
            connection.close()
            if kept is not None:
                kept.clear()
    if answer.status is not None:
        served.tally.add(request.route, answer.status)
    return answer


def read_stream(response, answer: Answer, started: float) -> None:
    """A stream's events: text pieces, each choice's finish reason, timings in the last event, then [DONE]; a
    disconnect leaves after its first text."""
    request, finished, done = answer.request, {}, False
    texts: dict[int, str] = collections.defaultdict(str)
    for line in response:
        if not line.startswith(b"data: "):
            continue
        if line.strip() == b"data: [DONE]":
            done = True
            if hasattr(response, "read"):
                response.read()  # the end of the chunked body: the connection may then carry the next request
            break
        event = json.loads(line[6:])
        if "error" in event:
            answer.problem = f"error event: {event['error']}"
            break
        choice = event["choices"][0]
        piece = choice["text"] if "text" in choice else choice["delta"].get("content") or ""
        texts[choice["index"]] += piece
        if piece and answer.first is None:
            answer.first = time.perf_counter() - started
        if choice["finish_reason"] is not None:
            finished[choice["index"]] = choice["finish_reason"]
        if "timings" in event:
            answer.prompt_tokens = event["timings"]["prompt_tokens"]
            answer.completion_tokens = event["timings"]["completion_tokens"]
        if request.kind.endswith("disconnect") and answer.first is not None:
            break  # the client goes away mid-stream (the connection is closed by the caller)
    answer.seconds = time.perf_counter() - started
    if request.kind.endswith("disconnect") and not done:
        answer.closed_early, answer.prompt_tokens, answer.completion_tokens = True, 0, 0
        return
    if answer.problem is None and not done:
        answer.problem = "the stream ended without [DONE]"
    elif answer.problem is None:
        answer.problem = check_choices(request, [(texts[i], finished.get(i)) for i in range(request.choices)],
                                       answer.completion_tokens, len(finished))


def check_plain(answer: Answer, payload: bytes) -> None:
    request = answer.request
    if answer.status != request.expect:
        answer.problem = f"HTTP {answer.status} (expected {request.expect}): {payload[:200]!r}"
        return
    if request.kind.startswith("poll"):  # /metrics is Prometheus' text
        return
    try:
        body = json.loads(payload)
    except ValueError:
        answer.problem = f"not JSON: {payload[:200]!r}"
        return
    if request.kind == "bad":
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict) or not error.get("message") or "Traceback" in error["message"]:
            answer.problem = f"a refusal without an error message: {body!r:.200}"
        return
    if request.kind in ("complete", "samples", "score", "chat"):
        usage = body["usage"]
        answer.prompt_tokens, answer.completion_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        texts = [(c["message"]["content"] if "message" in c else c["text"], c["finish_reason"])
                 for c in body["choices"]]
        answer.problem = check_choices(request, texts, usage["completion_tokens"], len(texts))
        if request.kind == "score" and answer.problem is None:
            scored = body["choices"][0]["logprobs"]["token_logprobs"]
            if len(scored) != usage["prompt_tokens"] or usage["completion_tokens"] != 0:
                answer.problem = f"scoring: {len(scored)} log-probabilities for {usage['prompt_tokens']} tokens"
        if answer.problem is None and "timings" not in body:
            answer.problem = "no timings"
        if request.body.get("temperature") == 0 and request.choices == 1:
            answer.text = texts[0][0]
    elif request.kind == "tokenize" and body["count"] != len(body["tokens"]):
        answer.problem = f"tokenize: count {body['count']} for {len(body['tokens'])} tokens"
    elif request.kind == "detokenize" and not isinstance(body.get("prompt"), str):
        answer.problem = "detokenize: no text"
    elif request.kind == "models" and not body["data"][0]["id"]:
        answer.problem = "models: no id"


def check_choices(request: Request, texts: list[tuple[str, str | None]], completion_tokens: int,
                  choices: int) -> str | None:
    """Whether a completion's choices are whole: as many as asked, each finished, within max_tokens, no stop string."""
    if choices != request.choices:
        return f"{choices} choices, {request.choices} asked"
    if any(reason not in ("stop", "length") for _, reason in texts):
        return f"finish reasons {[reason for _, reason in texts]}"
    if completion_tokens > request.max_tokens * request.choices:
        return f"{completion_tokens} tokens over max_tokens {request.max_tokens} x {request.choices}"
    echo = request.body.get("echo", False)
    if not echo and any(stop in text for text, _ in texts for stop in request.stops):
        return f"a stop string {request.stops} in the text"
    return None
