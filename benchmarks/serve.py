"""``lmkit serve`` under load: p50/p99 latency and total generated tokens/s at 1, 8 and 32 concurrent
clients, and batched against one-at-a-time serving (``--max-batch 1``) at 32 clients.

Real HTTP on 127.0.0.1 against the real command, each client a thread sending requests one after
another (bounded: --requests per client). Needs lmkit[serve] and a text checkpoint (the demo GPT by
default: run `make demo` first).

    python benchmarks/serve.py [--checkpoint demo/gpt/final] [--requests 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPTS = ["The for statement", "A class is", "The function returns", "Modules are", "An exception is raised when",
           "The with statement", "A dictionary maps", "Iterators"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: dict) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {payload}")
    return payload


def start(checkpoint: str, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lmkit", "--quiet", "serve", checkpoint, "--port", str(port),
                                "--max-queue", "1024", *args], env={**os.environ, "NO_COLOR": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start")


def load(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    def client(k: int) -> tuple[list[float], int]:
        latencies, tokens = [], 0
        for i in range(requests):
            started = time.perf_counter()
            answer = post(port, {"prompt": PROMPTS[(k + i) % len(PROMPTS)], "max_tokens": max_tokens,
                                 "temperature": 0})
            latencies.append(time.perf_counter() - started)
            tokens += answer["usage"]["completion_tokens"]
        return latencies, tokens

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(client, range(clients)))
    seconds = time.perf_counter() - started
    latencies = sorted(latency for found, _ in results for latency in found)
    tokens = sum(t for _, t in results)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    return {"clients": clients, "requests": len(latencies), "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": p99 * 1000, "tokens_per_s": tokens / seconds, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo/gpt/final")
    parser.add_argument("--requests", type=int, default=8, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/out/serve.json")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_dir():
        sys.exit(f"error: {args.checkpoint}: no checkpoint (run `make demo`, or pass --checkpoint)")
    rows = []
    for label, extra in (("batched", ()), ("one at a time", ("--max-batch", "1"))):
        process, port = start(args.checkpoint, *extra)
        try:
            post(port, {"prompt": "warm up", "max_tokens": 4})
            levels = (1, 8, 32) if label == "batched" else (32,)
            for clients in levels:
                row = {"server": label, **load(port, clients, args.requests, args.max_tokens)}
                rows.append(row)
                print(f"{label:>14} {clients:>3} clients: p50 {row['p50_ms']:7.0f} ms  p99 {row['p99_ms']:7.0f} ms  "
                      f"{row['tokens_per_s']:8.1f} tok/s  ({row['requests']} requests, {row['seconds']:.1f} s)",
                      flush=True)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    batched = next(r for r in rows if r["server"] == "batched" and r["clients"] == 32)
    single = next(r for r in rows if r["server"] == "one at a time")
    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    print(f"batched / one-at-a-time throughput at 32 clients: {ratio:.2f}x (goal >= 4x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rows": rows, "ratio_at_32": ratio, "max_tokens": args.max_tokens,
                                          "checkpoint": args.checkpoint}, indent=1) + "\n")


if __name__ == "__main__":
    main()
