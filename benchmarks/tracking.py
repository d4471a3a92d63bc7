"""Benchmark the cost of experiment tracking per training step: `lmkit pretrain --track mlflow` against the same run
untracked, with a local `mlflow server` (127.0.0.1, its stores in a temporary directory) on the same machine:

    python benchmarks/tracking.py                  # 600 steps of gpt-tiny, 2 rounds, --log-every 10 and 1
    python benchmarks/tracking.py --steps 200 --rounds 1

Each run is a fresh process (`lmkit pretrain`, as a user runs it) training gpt-tiny on lmkit's own docs for --steps
steps of 8 x 64 tokens with one torch thread; the sides alternate within each round. A run's cost is its training
time per step from metrics.jsonl's elapsed_s between step 20 and the last (the start-up, imports and the MFU probe
before the first step are outside it). Results go to stdout and benchmarks/out/tracking.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
LMKIT = [sys.executable, "-m", "lmkit", "-q"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(root: Path) -> tuple[str, subprocess.Popen]:
    uri = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", uri.rsplit(":", 1)[1], "--workers", "1", "--backend-store-uri",
                               f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return uri, server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start in 120 s")


def ms_per_step(run_dir: Path, first: int = 20) -> float:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r and r["step"] >= first]
    return 1000 * (train[-1]["elapsed_s"] - train[0]["elapsed_s"]) / (train[-1]["step"] - train[0]["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--log-every", default="10,1", help="comma-separated --log-every values to measure")
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="lmkit-tracking-bench-") as tmp:
        work = Path(tmp)
        (work / "corpus").mkdir()
        pages = sorted((ROOT / "docs").glob("*.md"))
        (work / "corpus" / "docs.txt").write_text("\n\n".join(page.read_text() for page in pages))
        subprocess.run([*LMKIT, "preprocess", str(work / "corpus"), "--out", str(work / "data"), "--vocab-size", "400",
                        "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
        uri, server = start_server(work)
        try:
            for round_ in range(args.rounds):
                for every in args.log_every.split(","):
                    for side in ("untracked", "mlflow"):
                        out = work / "runs" / f"{side}-{every}-{round_}"
                        track = ["--track", "mlflow"] if side == "mlflow" else []
                        subprocess.run([*LMKIT, "pretrain", str(work / "data"), "--out", str(out), "--model",
                                        "gpt-tiny", "--max-steps", str(args.steps), "--seq-len", "64", "--micro-batch",
                                        "8", "--eval-every", "0", "--checkpoint-every", "0", "--precision", "fp32",
                                        "--threads", "1", "--no-compile", "--log-every", every, *track],
                                       check=True, stdout=subprocess.DEVNULL,
                                       env={**os.environ, "MLFLOW_TRACKING_URI": uri})
                        figure = ms_per_step(out)
                        results.setdefault(f"log_every={every}", {}).setdefault(side, []).append(figure)
                        print(f"round {round_ + 1} --log-every {every} {side}: {figure:.2f} ms/step", flush=True)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
    summary = {setting: {side: {"runs_ms": [round(v, 2) for v in values],
                                "median_ms": round(statistics.median(values), 2)} for side, values in sides.items()}
               for setting, sides in results.items()}
    for setting, sides in summary.items():
        extra = sides["mlflow"]["median_ms"] - sides["untracked"]["median_ms"]
        print(f"{setting}: untracked {sides['untracked']['median_ms']} ms/step, mlflow {sides['mlflow']['median_ms']} "
              f"ms/step ({extra:+.2f} ms)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tracking.json").write_text(json.dumps({"steps": args.steps, "rounds": args.rounds, **summary}, indent=1))


if __name__ == "__main__":
    main()
