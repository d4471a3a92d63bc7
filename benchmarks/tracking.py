"""Benchmark the cost of experiment tracking per training step: `lmkit pretrain --track mlflow` against the same run
untracked, with a local `mlflow server` (127.0.0.1, its stores in a temporary directory) on the same machine; and
the cost of downstream evaluation while training: `--eval-tasks heldout` against the same validations without it.

    python benchmarks/tracking.py                  # 600 steps of gpt-tiny, 2 rounds, --log-every 10 and 1
    python benchmarks/tracking.py --steps 200 --rounds 1

Each run is a fresh process (`lmkit pretrain`, as a user runs it) training gpt-tiny on lmkit's own docs for --steps
steps of 8 x 64 tokens with one torch thread; the sides alternate within each round. A run's cost is its training
time per step from metrics.jsonl's elapsed_s between step 20 and the last (the start-up, imports and the MFU probe
before the first step are outside it). The --eval-tasks runs validate every --eval-every steps (4 batches) with and
without the held-out tasks (--eval-task-items of each); their cost is the difference of the runs' whole training
time (the last elapsed_s) per step, and eval_tasks_s per validation. Results go to stdout and
benchmarks/out/tracking.json.
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
    parser.add_argument("--eval-every", type=int, default=100, help="validations of the --eval-tasks runs")
    parser.add_argument("--eval-task-items", type=int, default=200)
    parser.add_argument("--parts", default="tracking,eval", help="comma-separated: tracking, eval")
    args = parser.parse_args()
    results: dict[str, dict[str, list[float]]] = {}
    validation_seconds: list[float] = []  # eval_tasks_s, the median of each --eval-tasks run
    with tempfile.TemporaryDirectory(prefix="lmkit-tracking-bench-") as tmp:
        work = Path(tmp)
        (work / "corpus").mkdir()
        pages = sorted((ROOT / "docs").glob("*.md"))
        (work / "corpus" / "docs.txt").write_text("\n\n".join(page.read_text() for page in pages))
        subprocess.run([*LMKIT, "preprocess", str(work / "corpus"), "--out", str(work / "data"), "--vocab-size", "400",
                        "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
        # The --eval-tasks runs: a third of the documents held out, so that heldout has its 200 items of each task.
        subprocess.run([*LMKIT, "preprocess", str(work / "corpus"), "--out", str(work / "data-eval"), "--vocab-size",
                        "400", "--workers", "1", "--val-fraction", "0.3"], check=True, stdout=subprocess.DEVNULL)
        parts = args.parts.split(",")
        uri, server = start_server(work)
        try:
            for round_ in range(args.rounds):
                for every in args.log_every.split(",") if "tracking" in parts else ():
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
                for side in ("validation", "heldout") if "eval" in parts else ():
                    out = work / "runs" / f"eval-{side}-{round_}"
                    tasks = ["--eval-tasks", "heldout", "--eval-task-items", str(args.eval_task_items)] \
                        if side == "heldout" else []
                    subprocess.run([*LMKIT, "pretrain", str(work / "data-eval"), "--out", str(out), "--model",
                                    "gpt-tiny", "--max-steps", str(args.steps), "--seq-len", "128", "--micro-batch",
                                    "8", "--eval-every", str(args.eval_every), "--eval-batches", "4",
                                    "--checkpoint-every", "0", "--precision", "fp32", "--threads", "1", "--no-compile",
                                    *tasks],
                                   check=True, stdout=subprocess.DEVNULL)
                    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                    total = 1000 * max(r.get("elapsed_s", 0) for r in records) / args.steps
                    results.setdefault("eval_tasks", {}).setdefault(side, []).append(total)
                    per_validation = [r["eval_tasks_s"] for r in records if "eval_tasks_s" in r]
                    if per_validation:
                        validation_seconds.append(statistics.median(per_validation))
                        last = {k: round(v, 3) for k, v in records[-1].items() if k.startswith("val_")}
                        print(f"  last validation: {last}")
                    print(f"round {round_ + 1} --eval-every {args.eval_every} {side}: {total:.2f} ms/step overall",
                          flush=True)
        finally:
            os.killpg(server.pid, signal.SIGKILL)
    summary = {setting: {side: {"runs_ms": [round(v, 2) for v in values],
                                "median_ms": round(statistics.median(values), 2)} for side, values in sides.items()}
               for setting, sides in results.items()}
    evals = summary.pop("eval_tasks", None)
    for setting, sides in summary.items():
        extra = sides["mlflow"]["median_ms"] - sides["untracked"]["median_ms"]
        print(f"{setting}: untracked {sides['untracked']['median_ms']} ms/step, mlflow {sides['mlflow']['median_ms']} "
              f"ms/step ({extra:+.2f} ms)")
    if evals:
        extra = evals["heldout"]["median_ms"] - evals["validation"]["median_ms"]
        print(f"--eval-tasks heldout every {args.eval_every} steps: {evals['validation']['median_ms']} ms/step with "
              f"validation alone, {evals['heldout']['median_ms']} with the tasks ({extra:+.2f} ms/step); "
              f"{statistics.median(validation_seconds):.2f} s per validation (eval_tasks_s)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "tracking.json").write_text(json.dumps({"steps": args.steps, "rounds": args.rounds, **summary,
                                                   "eval_tasks": {"eval_every": args.eval_every, **(evals or {}),
                                                                  "eval_tasks_s": validation_seconds}}, indent=1))


if __name__ == "__main__":
    main()
