"""``lmkit serve`` under a bounded mixed load on 127.0.0.1, checked: no error, no lost request, every slot freed.

1. The load: --requests requests from --clients concurrent clients, each client sending its share one after another,
   of mixed kinds: completions streamed and not (greedy, top-k, top-p, min-p with a repetition penalty, stop strings,
   seeds, max_tokens 1 to 64, two prompts in one request, logprobs), n > 1 samples, echo scoring (max_tokens 0),
   /tokenize, /detokenize, /v1/models, streams the client closes after their first chunk or before any answer, and
   bad requests that must be refused with their 4xx (counted apart, as expected refusals); half the clients keep
   their connection alive (serve_traffic.py holds the requests and how each answer is checked). Meanwhile a poller
   reads /metrics and /health/ready, which must answer 200 throughout. Checked: no 5xx and no connection error for a
   valid request, every answer whole (a stream ends with [DONE], no error event; choices, finish reasons, usage within
   max_tokens, no stop string in the text), none lost; after the load, /metrics shows no row running and an empty
   queue, its request counters per route and status equal what the clients sent, and its token counters what they
   were told. Reported: latency p50/p99 per kind (streams: time to first text too).
2. Disconnects at full batch: --max-batch streams closed after their first text, against the same streams read to
   the end: the slots are free again (no running row) well before those would have ended.
3. SIGTERM with requests in flight: each finishes whole, and the process exits 0 or 143 within the grace period.
4. Overload: a server with a small --max-queue answers a burst with 200 or 503 + Retry-After, nothing else, and
   serves again afterwards.
5. Chat (--chat-checkpoint, the demo's chat model beside --checkpoint when there is one): a smaller mixed load on a
   chat model, /v1/chat/completions streamed, not, and left mid-stream among the rest, with the same checks.

Every figure comes from the real command over real HTTP; nothing leaves the machine. Run it alone on the machine
(flock), as every benchmark. Exits 1 when a check fails.

    python benchmarks/serve_load.py [--checkpoint demo/gpt/final] [--requests 2000] [--clients 64]
                                    [--chat-checkpoint demo/chat/final] [--chat-requests 500]
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import SENTENCES, free_port, percentile, wait_ready  # noqa: E402
from serve_traffic import (  # noqa: E402
    CHAT_MIX,
    CLIENT_TIMEOUT,
    MAX_BODY,
    MIX,
    ROUTES,
    STREAMED,
    Answer,
    Request,
    Target,
    plan,
    read_stream,
    send,
)

# -- the server ----------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class Served(Target):
    """A server started here: its process and its request log."""

    process: subprocess.Popen
    log: Path


def start(checkpoint: str, *args: str) -> Served:
    """``lmkit serve`` on 127.0.0.1, its request log in a file; returns once /health/ready is 200."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="serve_load_", suffix=".log")[1])
    process = subprocess.Popen([sys.executable, "-m", "lmkit", "serve", checkpoint, "--port", str(port),
                                "--max-body", str(MAX_BODY), *args], stdout=subprocess.DEVNULL,
                               stderr=log.open("w"), env={**os.environ, "NO_COLOR": "1"})
    try:  # a compile (--compile) takes a minute or more on a CPU
        wait_ready(process, port, "/health/ready", 600, "lmkit serve")
    except RuntimeError as error:
        raise RuntimeError(f"{error}: {log.read_text()[-2000:]}") from None
    return Served(port=port, process=process, log=log)


def get(served: Served, path: str, timeout: float = 60.0):
    """GET ``path``, answered whole: (status, parsed JSON or bytes). Counted in the server's tally."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    served.tally.add(path if path in ROUTES else "other", response.status)
    return response.status, json.loads(payload) if payload[:1] in (b"{", b"[") else payload


def scrape(served: Served) -> dict[tuple[str, frozenset], float]:
    """Every sample of GET /metrics: {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = get(served, "/metrics", timeout=30)
    if status != 200:
        raise RuntimeError(f"GET /metrics: {status}")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text.decode()) for sample in family.samples}


def requests_counted(samples) -> collections.Counter:
    return collections.Counter({(dict(labels)["route"], dict(labels)["status"]): int(value)
                                for (name, labels), value in samples.items() if name == "lmkit_requests_total"})


def gauge(samples, name: str) -> float:
    return samples.get((name, frozenset()), 0.0)


def run_load(served: Served, requests: list[Request], clients: int, poll_every: float = 0.05) -> dict:
    """``requests`` sent by ``clients`` concurrent clients (client k sends requests k, k + clients, ...; half of
    them on one connection kept alive), /metrics and /health/ready polled meanwhile; the answers, the polls and the
    seconds it took."""
    stop, polls = threading.Event(), []

    def poller() -> None:
        for turn in range(10 ** 9):
            if stop.wait(poll_every):
                return
            path = "/metrics" if turn % 2 == 0 else "/health/ready"
            polls.append(send(served, Request("poll " + path, path, method="GET")))

    def client(k: int) -> list[Answer]:
        kept = [] if k % 2 == 0 else None  # half the clients keep their connection alive
        try:
            return [send(served, request, kept) for request in requests[k::clients]]
        finally:
            for connection in kept or ():
                connection.close()

    watcher = threading.Thread(target=poller, daemon=True)
    started = time.perf_counter()
    watcher.start()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = [answer for found in pool.map(client, range(clients)) for answer in found]
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    return {"answers": answers, "polls": polls, "seconds": seconds}


def summarize(answers: list[Answer], polls: list[Answer], sent: int) -> dict:
    """Counts per kind, latency percentiles, errors (a valid request's wrong or partial answer), lost requests and
    the expected refusals by reason."""
    by_kind: dict[str, list[Answer]] = collections.defaultdict(list)
    for answer in answers + polls:
        by_kind[answer.request.kind].append(answer)
    kinds = {}
    for kind, found in sorted(by_kind.items()):
        latencies = [a.seconds for a in found if a.status is not None]
        row = {"count": len(found), "p50_ms": round(percentile(latencies, 0.5) * 1000, 1) if latencies else None,
               "p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None}
        firsts = [a.first for a in found if a.first is not None]
        if firsts and kind in STREAMED:
            row |= {"ttft_p50_ms": round(percentile(firsts, 0.5) * 1000, 1),
                    "ttft_p99_ms": round(percentile(firsts, 0.99) * 1000, 1)}
        if kind.endswith("disconnect") or kind == "abandon":
            row["closed_mid_stream"] = sum(a.closed_early for a in found)
        kinds[kind] = row
    problems = [a for a in answers + polls if a.problem is not None]
    refusals = collections.Counter(f"{a.request.why}: {a.status}" for a in answers
                                   if a.request.kind == "bad" and a.problem is None)
    greedy: dict[str, list[str]] = collections.defaultdict(list)  # greedy requests sent more than once
    for a in answers:
        if a.text is not None:
            greedy[json.dumps({k: v for k, v in a.request.body.items() if k != "seed"}, sort_keys=True)].append(a.text)
    return {"requests": len(answers), "lost": sent - len(answers) + sum(a.status is None for a in answers),
            "errors": len(problems), "server_errors": sum((a.status or 0) >= 500 for a in answers + polls),
            "connection_errors": sum(a.status is None for a in answers + polls), "kinds": kinds,
            "refusals": dict(sorted(refusals.items())), "problems": [f"{a.request.kind} {a.request.why or ''}: "
                                                                     f"{a.problem}" for a in problems[:20]],
            "greedy_repeated": sum(len(texts) > 1 for texts in greedy.values()),
            "greedy_repeated_differing": sum(len(set(texts)) > 1 for texts in greedy.values())}


def settle(served: Served, before: dict, tally_before: collections.Counter, answers: list[Answer],
           seconds: float = 30.0) -> dict:
    """After a load: wait (up to ``seconds``) until the engine is idle and /metrics counts what the clients sent
    since ``before``; the last scrape's view."""
    deadline = time.monotonic() + seconds
    while True:
        expected = served.tally.snapshot() - tally_before  # every answer so far, this scrape's not yet
        after = scrape(served)
        counted = requests_counted(after) - requests_counted(before)
        idle = gauge(after, "lmkit_running_rows") == 0 and gauge(after, "lmkit_queue_length") == 0
        if (idle and counted == expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    _, health = get(served, "/health")

    def grew(name: str) -> int:
        return int(gauge(after, name) - gauge(before, name))

    return {"running_rows": gauge(after, "lmkit_running_rows"), "queue_length": gauge(after, "lmkit_queue_length"),
            "kv_slots": gauge(after, "lmkit_kv_slots"), "health_running": health["running"],
            "health_queued": health["queued"], "metrics_match": counted == expected,
            "metrics_differences": {f"{route} {status}": {"server": counted[(route, status)],
                                                          "clients": expected[(route, status)]}
                                    for route, status in sorted(set(counted) | set(expected))
                                    if counted[(route, status)] != expected[(route, status)]},
            "requests_by_route_status": {f"{route} {status}": n for (route, status), n in sorted(counted.items())},
            "prompt_tokens": {"server": grew("lmkit_prompt_tokens_total"),
                              "clients": sum(a.prompt_tokens for a in answers)},
            "generation_tokens": {"server": grew("lmkit_generation_tokens_total"),
                                  "clients": sum(a.completion_tokens for a in answers)},
            "prefix_cache_hit_tokens": grew("lmkit_prefix_cache_hits_total")}


# -- the phases ----------------------------------------------------------------------------------------------------

def mixed(served: Served, total: int, clients: int, seed: int, max_tokens: int, mix: dict[str, int] = MIX) -> dict:
    _, info = get(served, "/tokenizer_info")
    requests = plan(total, seed, info["vocab_size"], max_tokens, mix)
    tally_before, before = served.tally.snapshot(), scrape(served)
    load = run_load(served, requests, clients)
    summary = summarize(load["answers"], load["polls"], len(requests))
    after = settle(served, before, tally_before, load["answers"] + load["polls"])
    return {"clients": clients, "seconds": round(load["seconds"], 2), **summary, "after": after}


def disconnects(served: Served, rows: int) -> dict:
    """``rows`` long streams read to the end, then the same closed after their first text: how long until no row
    runs, against how long the ones read to the end took."""
    def body(k: int) -> dict:
        return {"prompt": f"{SENTENCES[k % len(SENTENCES)].split(',')[0]} and", "max_tokens": 120,
                "temperature": 1.0, "seed": k, "stream": True}

    with concurrent.futures.ThreadPoolExecutor(rows) as pool:
        started = time.perf_counter()
        whole = list(pool.map(lambda k: send(served, Request("stream", "/v1/completions", body(k), choices=1,
                                                             max_tokens=120)), range(rows)))
        whole_seconds = time.perf_counter() - started
        tokens_before = gauge(scrape(served), "lmkit_generation_tokens_total")
        started = time.perf_counter()
        left = list(pool.map(lambda k: send(served, Request("disconnect", "/v1/completions", body(k), choices=1,
                                                            max_tokens=120)), range(rows)))
    while gauge(samples := scrape(served), "lmkit_running_rows") > 0 and time.perf_counter() - started < 60:
        time.sleep(0.005)
    freed = time.perf_counter() - started
    return {"rows": rows, "whole_seconds": round(whole_seconds, 3), "whole_tokens": sum(a.completion_tokens
                                                                                       for a in whole),
            "closed_mid_stream": sum(a.closed_early for a in left), "freed_seconds": round(freed, 3),
            "running_after": gauge(samples, "lmkit_running_rows"),
            "tokens_counted_for_closed": int(gauge(samples, "lmkit_generation_tokens_total") - tokens_before),
            "errors": sum(a.problem is not None for a in whole + left)}


def sigterm(served: Served, in_flight: int, grace: float) -> dict:
    """``in_flight`` requests (half streamed) started, SIGTERM once each stream has its first text: every request
    finishes whole, and the process exits."""
    first_texts = threading.Semaphore(0)
    streams = in_flight // 2

    def one(k: int) -> Answer:
        body = {"prompt": f"{SENTENCES[k % len(SENTENCES)]} Then", "max_tokens": 64, "temperature": 0.9,
                "seed": k, "stream": k < streams}
        request = Request("stream" if k < streams else "complete", "/v1/completions", body, choices=1, max_tokens=64)
        if k >= streams:
            return send(served, request)
        answer = Answer(request)  # a stream read here, to signal its first text
        started = time.perf_counter()
        connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=CLIENT_TIMEOUT)
        try:
            connection.request("POST", request.path, body=json.dumps(body), headers={"Content-Type":
                                                                                     "application/json"})
            response = connection.getresponse()
            answer.status = response.status
            lines = iter(response)
            head = next(lines)
            first_texts.release()
            read_stream(itertools.chain([head], lines), answer, started)
        except (OSError, http.client.HTTPException, StopIteration) as exc:
            answer.status, answer.problem = None, f"{type(exc).__name__}: {exc}"
            first_texts.release()
        finally:
            connection.close()
        return answer

    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        futures = [pool.submit(one, k) for k in range(in_flight)]
        for _ in range(streams):
            first_texts.acquire(timeout=60)
        signalled = time.perf_counter()
        served.process.send_signal(signal.SIGTERM)
        unfinished = sum(not f.done() for f in futures)
        answers = [f.result() for f in futures]
    try:
        code = served.process.wait(timeout=grace + 30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        code = None
    exited = time.perf_counter() - signalled
    log = served.log.read_text()
    return {"in_flight": in_flight, "unfinished_at_sigterm": unfinished,
            "finished_whole": sum(a.status == 200 and a.problem is None for a in answers),
            "problems": [a.problem for a in answers if a.problem][:5], "exit_code": code,
            "exit_seconds": round(exited, 2), "log_has_traceback": "Traceback" in log}


def overload(checkpoint: str, flags: list[str], clients: int, max_queue: int) -> dict:
    """A burst of ``clients`` requests (half streamed) at a server with --max-queue ``max_queue`` and --max-batch 2:
    each is 200 or 503 with Retry-After; afterwards the server is idle and answers."""
    served = start(checkpoint, "--max-queue", str(max_queue), "--max-batch", "2", *flags)
    try:
        def one(k: int) -> Answer:
            body = {"prompt": SENTENCES[k % len(SENTENCES)][:30], "max_tokens": 32, "temperature": 0.8, "seed": k,
                    "stream": k % 2 == 0}
            return send(served, Request("stream" if k % 2 == 0 else "complete", "/v1/completions", body, choices=1,
                                        max_tokens=32))

        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(one, range(clients)))
        busy = [a for a in answers if a.status == 503]
        wrong = [a for a in answers if a.status not in (200, 503) or (a.status == 200 and a.problem is not None)]
        samples = scrape(served)
        after = send(served, Request("complete", "/v1/completions", {"prompt": "x", "max_tokens": 4}, choices=1,
                                     max_tokens=4))
        return {"max_queue": max_queue, "requests": clients, "ok": sum(a.status == 200 for a in answers),
                "busy_503": len(busy), "busy_with_retry_after": sum(a.retry_after == "1" for a in busy),
                "other": len(wrong), "problems": [f"{a.status}: {a.problem}" for a in wrong][:5],
                "queue_after": gauge(samples, "lmkit_queue_length"), "serves_after": after.problem is None}
    finally:
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=60)
        served.log.unlink(missing_ok=True)


def load_checks(load: dict, requests: int, clients: int) -> dict[str, bool]:
    after = load["after"]
    return {"at least the requests asked, from the clients asked": load["requests"] >= requests
            and load["clients"] == clients,
            "no error (5xx, connection error, partial or wrong answer)": load["errors"] == 0,
            "no request lost": load["lost"] == 0,
            "/metrics and /health/ready answered during the load": load["kinds"].get("poll /metrics", {}).get(
                "count", 0) > 0 and load["kinds"].get("poll /health/ready", {}).get("count", 0) > 0,
            "no row running and an empty queue after the load": after["running_rows"] == 0
            and after["queue_length"] == 0 and after["health_running"] == 0 and after["health_queued"] == 0,
            "/metrics counts every request by route and status": after["metrics_match"],
            "/metrics counts the tokens the clients were told": after["prompt_tokens"]["server"]
            == after["prompt_tokens"]["clients"] and after["generation_tokens"]["server"]
            == after["generation_tokens"]["clients"]}


def checks(report: dict, args) -> dict[str, bool]:
    found = load_checks(report["mixed"], args.requests, args.clients)
    storm, term, over = report["disconnects"], report["sigterm"], report["overload"]
    found["closed streams free their slots before they would have ended"] = (
        storm["running_after"] == 0 and storm["errors"] == 0 and storm["freed_seconds"] < storm["whole_seconds"])
    found["SIGTERM: in-flight requests finish whole, exit 0 or 143"] = (
        term["finished_whole"] == term["in_flight"] and term["exit_code"] in (0, 143)
        and not term["log_has_traceback"])
    found["overload: 503 with Retry-After, nothing else, then serves"] = (
        over["busy_503"] > 0 and over["busy_with_retry_after"] == over["busy_503"] and over["other"] == 0
        and over["queue_after"] == 0 and over["serves_after"])
    if "chat" in report:
        found |= {f"chat: {name}": passed for name, passed in load_checks(report["chat"], args.chat_requests,
                                                                          args.chat_clients).items()}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo/gpt/final", help="a GPT text checkpoint (make demo)")
    parser.add_argument("--requests", type=int, default=2000, help="requests of the mixed load")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients of the mixed load")
    parser.add_argument("--chat-checkpoint", default=None, help="a chat model for the chat load (default: chat/final "
                        "beside --checkpoint's run, when it is there; 'none' to skip it)")
    parser.add_argument("--chat-requests", type=int, default=500, help="requests of the chat load")
    parser.add_argument("--chat-clients", type=int, default=32, help="concurrent clients of the chat load")
    parser.add_argument("--max-tokens", type=int, default=256, help="the server's --max-tokens")
    parser.add_argument("--seed", type=int, default=0, help="the load's order and contents")
    parser.add_argument("--compile", action="store_true", help="serve with --compile (default: --no-compile)")
    parser.add_argument("--out", default="benchmarks/out/serve_load.json")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_dir():
        sys.exit(f"error: {args.checkpoint}: no checkpoint (run `make demo`, or pass --checkpoint)")
    chat = args.chat_checkpoint or str(Path(args.checkpoint).resolve().parent.parent / "chat" / "final")
    chat = None if args.chat_checkpoint == "none" or not Path(chat).is_dir() else chat
    if args.chat_checkpoint not in (None, "none") and chat is None:
        sys.exit(f"error: --chat-checkpoint {args.chat_checkpoint}: no checkpoint there")
    flags = ["--compile" if args.compile else "--no-compile", "--max-tokens", str(args.max_tokens)]
    report: dict[str, Any] = {"checkpoint": args.checkpoint, "chat_checkpoint": chat, "compile": args.compile}
    started = time.perf_counter()
    served = start(args.checkpoint, "--max-queue", "1024", *flags)
    report["start_seconds"] = round(time.perf_counter() - started, 1)
    try:
        report["mixed"] = mixed(served, args.requests, args.clients, args.seed, args.max_tokens)
        report["disconnects"] = disconnects(served, rows=32)
        report["sigterm"] = sigterm(served, in_flight=48, grace=10.0)
    finally:
        if served.process.poll() is None:
            served.process.kill()
        served.log.unlink(missing_ok=True)
    report["overload"] = overload(args.checkpoint, flags, clients=48, max_queue=4)
    if chat is not None:
        served = start(chat, "--max-queue", "1024", *flags)
        try:
            report["chat"] = mixed(served, args.chat_requests, args.chat_clients, args.seed, args.max_tokens, CHAT_MIX)
        finally:
            served.process.send_signal(signal.SIGTERM)
            served.process.wait(timeout=60)
            served.log.unlink(missing_ok=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["checks"] = checks(report, args)
    print_report(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(0 if all(report["checks"].values()) else 1)


def print_load(name: str, load: dict) -> None:
    print(f"{name}: {load['requests']} requests from {load['clients']} clients in {load['seconds']} s: "
          f"{load['errors']} errors, {load['lost']} lost, {load['server_errors']} 5xx, "
          f"{load['connection_errors']} connection errors")
    for kind, row in load["kinds"].items():
        extra = "".join(f"  {key} {value}" for key, value in row.items() if key not in ("count", "p50_ms", "p99_ms"))
        print(f"  {kind:>18}: {row['count']:5d}  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms{extra}")
    print(f"  expected refusals: {sum(load['refusals'].values())} ({len(load['refusals'])} kinds)")
    for problem in load["problems"]:
        print(f"  problem: {problem}")
    after = load["after"]
    print(f"  after: running rows {after['running_rows']:g}, queue {after['queue_length']:g}, KV slots "
          f"{after['kv_slots']:g}; /metrics requests match: {after['metrics_match']} "
          f"{after['metrics_differences'] or ''}; prompt tokens {after['prompt_tokens']}, generated "
          f"{after['generation_tokens']}")


def print_report(report: dict) -> None:
    print(f"server ready in {report['start_seconds']} s; the whole run took {report['total_seconds']} s")
    print_load("mixed load", report["mixed"])
    for name in ("disconnects", "sigterm", "overload"):
        print(f"{name}: {json.dumps(report[name])}")
    if "chat" in report:
        print_load(f"chat load ({report['chat_checkpoint']})", report["chat"])
    for name, passed in report["checks"].items():
        print(f"{'ok  ' if passed else 'FAIL'} {name}")


if __name__ == "__main__":
    main()
