"""``lmkit serve`` under load: continuous batching (``--scheduler continuous``) against the dynamic batching it
replaced (``--scheduler dynamic``, the same build), and prefix reuse.

1. A mixed load: 1, 8 and 32 concurrent clients, each sending --requests streamed completions one after another,
   of mixed prompt lengths (2 to about 100 tokens), max_tokens and sampling settings (greedy, top-k,
   top-p, min-p with a repetition penalty, a stop string; seeds differ). Per scheduler: generated tokens/s (the
   server's count, from the stream's last chunk), p50 and p99 latency, p50 and p99 time to first token (the first
   chunk with text). Both servers run side by side; the sides alternate each round, and each figure is the best
   of --rounds.
2. Prefix reuse: a shared system prompt of about --system-tokens tokens, then a short question, on a GPT whose
   context holds it (the demo GPT's is 128 tokens: a gpt-small with --block-size 2048 pretrained for one step on the
   demo data is built into benchmarks/out/serve-long, unless --long-checkpoint is given; speed does not depend on
   the weights). Time to first token of the first request (nothing cached) against the later ones (other
   questions after the same system prompt), with the prefix cache, without it (--prefix-cache-tokens 0), and with
   dynamic batching. A new system prompt each round, so each round's first request is cold.

3. The peer (``--only peer``): the same mixed load against llama.cpp's server on the same weights, exported with
   ``lmkit export --format gguf --gguf-type f32`` (lmkit serves fp32 too) and served by llama-cpp-python's
   ``python -m llama_cpp.server`` (llama.cpp built from source by ``pip install 'llama-cpp-python[server]'``), both
   with the machine's cores. llama.cpp gets every setting explicitly (its server's defaults differ: top-k 40,
   top-p 0.95, min-p 0.05, repeat penalty 1.1; and a new request interrupts the running one unless
   ``--interrupt_requests False``, which the benchmark passes), and its generated tokens are counted as the
   stream's chunks with text (one per token), lmkit's from its timings. llama-cpp-python's server decodes one
   request at a time (llama.cpp's C++ ``llama-server`` batches; it is not built here).

Real HTTP on 127.0.0.1 against the real command. Needs lmkit[serve] and a text checkpoint (the demo GPT by default:
run `make demo` first). Run it alone on the machine (flock), as every benchmark.

    python benchmarks/serve.py [--checkpoint demo/gpt/final] [--requests 6] [--rounds 3] [--compile]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import importlib.util
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

SENTENCES = ["The for statement iterates over the items of any sequence, in the order they appear.",
             "A class is a template for objects: it bundles data and the functions that work on it.",
             "The function returns a value to its caller, or None when it ends without a return statement.",
             "Modules are files of Python definitions; a package is a directory of modules.",
             "An exception is raised when an error is detected during execution.",
             "The with statement wraps a block with methods defined by a context manager.",
             "A dictionary maps hashable keys to arbitrary values and keeps their insertion order.",
             "Iterators produce the items of a container one at a time, on demand."]
# (settings, max_tokens) of the mixed load, in turn: what different clients ask of one server at once.
SETTINGS = [({"temperature": 0}, 48), ({"temperature": 0.8, "top_k": 40}, 32),
            ({"temperature": 1.0, "top_p": 0.9}, 64), ({"temperature": 0.7, "min_p": 0.05, "repetition_penalty": 1.2},
                                                       24),
            ({"temperature": 0.9, "stop": ["\n\n"]}, 40), ({"temperature": 0}, 16)]
SCHEDULERS = ("continuous", "dynamic")
PEER_COUNTS_CHUNKS: dict[int, bool] = {}  # port -> the server there is llama.cpp's (no timings in its stream)
# What llama.cpp's server must be told to sample as lmkit does by default (its own defaults differ).
LLAMA_NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkpoint: str, *args: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lmkit", "--quiet", "serve", checkpoint, "--port", str(port),
                                "--max-queue", "1024", *args], env={**os.environ, "NO_COLOR": "1"})
    # A compile (--compile) takes a minute or more on a CPU.
    return process, wait_ready(process, port, "/health", 600, "lmkit serve")


def wait_ready(process: subprocess.Popen, port: int, path: str, seconds: float, name: str) -> int:
    """``port`` once GET ``path`` answers 200; the server killed and an error after ``seconds`` or if it exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not start")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


def stream(port: int, body: dict) -> tuple[float, float, int]:
    """One streamed completion: (seconds to the end, seconds to the first text, completion tokens; llama.cpp's
    server sends no timings: its chunks with text, one per token)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    connection.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    first, tokens, chunks = None, None, 0
    for line in response:
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise RuntimeError(f"stream error: {chunk['error']}")
        if chunk["choices"] and chunk["choices"][0]["text"]:
            chunks += 1
            if first is None:
                first = time.perf_counter() - started
        if "timings" in chunk:
            tokens = chunk["timings"]["completion_tokens"]
    if tokens is None and PEER_COUNTS_CHUNKS.get(port):
        tokens = chunks
    connection.close()
    total = time.perf_counter() - started
    if tokens is None:
        raise RuntimeError("the stream's last chunk carries no timings (completion_tokens)")
    return total, total if first is None else first, tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def mixed_request(k: int, i: int) -> dict:
    """Client k's i-th request: a prompt of 0 to 4 sentences then the beginning of one (a prompt ending with a
    sentence is often answered by </s> at once), its settings and seed."""
    rng = random.Random(k * 1000 + i)
    settings, max_tokens = SETTINGS[(k + i) % len(SETTINGS)]
    words = rng.choice(SENTENCES).split()
    sentences = [rng.choice(SENTENCES) for _ in range(rng.choice((0, 0, 1, 2, 4)))]
    prompt = " ".join([*sentences, " ".join(words[:rng.randint(2, len(words) // 2)])])
    return {"prompt": prompt, "max_tokens": max_tokens, "seed": k * 1000 + i, **settings}


def for_llama(body: dict) -> dict:
    """The same request for llama.cpp's server: every setting explicit, its name for the repetition penalty."""
    body = {**LLAMA_NEUTRAL, **body}
    if "repetition_penalty" in body:
        body["repeat_penalty"] = body.pop("repetition_penalty")
    return body


def shaped(port: int, body: dict) -> dict:
    """``body`` as the server on ``port`` wants it (llama.cpp's: for_llama)."""
    return for_llama(body) if PEER_COUNTS_CHUNKS.get(port) else body


def load(port: int, clients: int, requests: int) -> dict:
    def client(k: int) -> list[tuple[float, float, int]]:
        return [stream(port, shaped(port, mixed_request(k, i))) for i in range(requests)]

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for found in pool.map(client, range(clients)) for r in found]
    seconds = time.perf_counter() - started
    latencies, firsts = [r[0] for r in results], [r[1] for r in results]
    return {"clients": clients, "requests": len(results), "tokens_per_s": sum(r[2] for r in results) / seconds,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "ttft_p50_ms": statistics.median(firsts) * 1000, "ttft_p99_ms": percentile(firsts, 0.99) * 1000}


def best(rows: list[dict]) -> dict:
    """Each figure's best over the rounds: the highest throughput, the lowest latencies."""
    return {**rows[0], "tokens_per_s": max(r["tokens_per_s"] for r in rows),
            **{key: min(r[key] for r in rows) for key in ("p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms")}}


def compare(ports: dict[str, int], args, label: str) -> list[dict]:
    """The mixed load at 1, 8 and 32 clients on each server of ``ports`` (name -> port), the sides alternating
    round by round; each side's best of --rounds, as a row whose ``label`` is the side's name."""
    for port in ports.values():
        stream(port, shaped(port, {"prompt": "warm up", "max_tokens": 4}))
    rows = []
    for clients in (1, 8, 32):
        measured: dict[str, list[dict]] = {name: [] for name in ports}
        for round_ in range(args.rounds):
            for name in (list(ports) if round_ % 2 == 0 else list(ports)[::-1]):
                measured[name].append(load(ports[name], clients, args.requests))
        for name in ports:
            row = {label: name, **best(measured[name])}
            rows.append(row)
            print(f"{name:>10} {clients:>3} clients: {row['tokens_per_s']:7.1f} tok/s  "
                  f"p50 {row['p50_ms']:6.0f} ms  p99 {row['p99_ms']:6.0f} ms  "
                  f"TTFT p50 {row['ttft_p50_ms']:5.0f} ms  p99 {row['ttft_p99_ms']:5.0f} ms  "
                  f"({row['requests']} requests)", flush=True)
    return rows


def mixed(args, flags: list[str]) -> list[dict]:
    servers = {name: start(args.checkpoint, "--scheduler", name, *flags) for name in SCHEDULERS}
    try:
        return compare({name: port for name, (_, port) in servers.items()}, args, "scheduler")
    finally:
        for process, _ in servers.values():
            stop(process)


def start_llama(args) -> tuple[subprocess.Popen, int]:
    """llama.cpp's server on the checkpoint's weights, exported to GGUF (f32) beside the benchmark's output."""
    gguf_dir = Path(args.out).parent / "serve-gguf"
    subprocess.run([sys.executable, "-m", "lmkit", "--quiet", "export", args.checkpoint, "--format", "gguf",
                    "--gguf-type", "f32", "--out", str(gguf_dir)], check=True)
    from lmkit.checkpoint import read_checkpoint

    context = read_checkpoint(args.checkpoint).model_config.block_size
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_dir / "model.gguf"),
                                "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(context),
                                "--n_threads", str(len(os.sched_getaffinity(0))), "--verbose", "False",
                                # Its default lets each new request cut the running one short; queue them instead.
                                "--interrupt_requests", "False"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    PEER_COUNTS_CHUNKS[port] = True
    return process, wait_ready(process, port, "/v1/models", 120,
                               "llama_cpp.server (pip install 'llama-cpp-python[server]')")


def peer(args, flags: list[str]) -> list[dict]:
    """The mixed load on lmkit serve (continuous batching) and on llama.cpp's server, sides alternating."""
    sides = {"lmkit": start(args.checkpoint, "--scheduler", "continuous", *flags)}
    try:
        sides["llama.cpp"] = start_llama(args)
        return compare({name: port for name, (_, port) in sides.items()}, args, "server")
    finally:
        stop(sides["lmkit"][0])
        if "llama.cpp" in sides:
            os.killpg(sides["llama.cpp"][0].pid, signal.SIGTERM)


def long_checkpoint(args) -> str:
    if args.long_checkpoint:
        return args.long_checkpoint
    out = Path("benchmarks/out/serve-long")
    if not (out / "final" / "manifest.json").exists():
        data = Path(args.checkpoint).resolve().parent.parent.parent / "data"  # the demo's dataset beside its gpt/
        subprocess.run([sys.executable, "-m", "lmkit", "--quiet", "pretrain", str(data), "--out", str(out),
                        "--model", "gpt-small", "--block-size", "2048", "--seq-len", "128", "--micro-batch", "4",
                        "--max-steps", "1", "--eval-every", "0", "--checkpoint-every", "0", "--precision", "fp32",
                        "--force"], check=True)
    return str(out / "final")


def system_prompt(port: int, round_: int, tokens: int) -> str:
    """A system prompt of about ``tokens`` tokens, different each round (its first words say which)."""
    text = f"Session {round_}. You are a helpful assistant for Python questions."
    rng = random.Random(round_)
    while True:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/tokenize", body=json.dumps({"prompt": text}),
                           headers={"Content-Type": "application/json"})
        count = json.loads(connection.getresponse().read())["count"]
        if count >= tokens:
            return text
        text += " " + " ".join(rng.choice(SENTENCES) for _ in range(4))


def prefix(args, flags: list[str]) -> list[dict]:
    checkpoint = long_checkpoint(args)
    sides = {"continuous, prefix cache": ["--scheduler", "continuous"],
             "continuous, no prefix cache": ["--scheduler", "continuous", "--prefix-cache-tokens", "0"],
             "dynamic": ["--scheduler", "dynamic"]}
    servers = {name: start(checkpoint, *extra, *flags) for name, extra in sides.items()}
    rows = []
    try:
        for _, port in servers.values():
            stream(port, {"prompt": "warm up", "max_tokens": 2})
        measured: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for round_ in range(args.rounds):
            system = system_prompt(next(iter(servers.values()))[1], round_, args.system_tokens)
            for name in (list(sides) if round_ % 2 == 0 else list(sides)[::-1]):
                port = servers[name][1]
                firsts = [stream(port, {"prompt": f"{system}\nQuestion {q}: {SENTENCES[q]} Why?", "max_tokens": 4,
                                        "temperature": 0})[1] for q in range(args.questions)]
                measured[name].append((firsts[0], statistics.median(firsts[1:])))
        for name in sides:
            first, later = min(m[0] for m in measured[name]), min(m[1] for m in measured[name])
            rows.append({"server": name, "first_ttft_ms": first * 1000, "later_ttft_ms": later * 1000})
            print(f"{name:>28}: TTFT first request {first * 1000:6.0f} ms, later requests (median) "
                  f"{later * 1000:6.0f} ms", flush=True)
    finally:
        for process, _ in servers.values():
            stop(process)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="demo/gpt/final")
    parser.add_argument("--long-checkpoint", default=None, help="a GPT with a context of more than --system-tokens")
    parser.add_argument("--requests", type=int, default=6, help="requests per client")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--system-tokens", type=int, default=1000)
    parser.add_argument("--questions", type=int, default=6, help="requests after each system prompt")
    parser.add_argument("--compile", action="store_true", help="serve with --compile (default: --no-compile)")
    parser.add_argument("--only", choices=("mixed", "prefix", "peer"), default=None)
    parser.add_argument("--out", default="benchmarks/out/serve.json")
    args = parser.parse_args()
    if not Path(args.checkpoint).is_dir():
        sys.exit(f"error: {args.checkpoint}: no checkpoint (run `make demo`, or pass --checkpoint)")
    flags = ["--compile" if args.compile else "--no-compile"]
    report = {"checkpoint": args.checkpoint, "compile": args.compile, "requests": args.requests,
              "rounds": args.rounds}
    if args.only in (None, "mixed"):
        report["mixed"] = mixed(args, flags)
    if args.only in (None, "prefix"):
        report["prefix"] = prefix(args, flags)
    if args.only == "peer" or (args.only is None and importlib.util.find_spec("llama_cpp") is not None):
        report["peer"] = peer(args, flags)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
