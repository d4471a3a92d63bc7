"""Which of the speedrun's levers pay on this machine: `lmkit pretrain` with its defaults against the same run
with one lever changed, on time_to_loss.py's corpus and model (the King James Bible, its 8,000-piece BPE,
gpt-small: nanoGPT's shape).

The levers lmkit has, each a flag: Muon for the hidden matrices (``--optimizer muon``), RMSNorm on queries
and keys (``--qk-norm``), and a warmup-stable-decay schedule (``--schedule wsd``, against the cosine decay a
run bounded by steps gets by default). Each run trains ``--steps`` steps (the defaults' micro-batch of 8 x
256 tokens), validating every ``--eval-every`` steps (lmkit's own validation loss: the same windows for
every run), eager (``--no-compile``: the runs are too short for a compile to pay, and a cold compile would
add tens of noisy seconds to each). Its curve is (training seconds, validation loss), the seconds from
metrics.jsonl less validation and checkpoint time (time_to_loss.lmkit_clock).

What decides: the training time each run needs to reach the loss the defaults reach at their last step
(the seed's target), linearly interpolated as in time_to_loss.py; a lever pays when it gets there sooner
over every seed. The runs of a seed rotate which goes first. Results: a table on stdout and
benchmarks/out/pretrain_levers.json.

    python benchmarks/pretrain_levers.py                      # 2 seeds of 300 steps, every lever
    python benchmarks/pretrain_levers.py --steps 60 --seeds 1 # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_loss import LMKIT_MODEL, OUT, ROOT, crossing, kjv_dataset, lmkit_clock  # noqa: E402

LEVERS = {"defaults": [], "muon": ["--optimizer", "muon"], "qk-norm": ["--qk-norm"], "wsd": ["--schedule", "wsd"]}


def dataset(work: Path) -> Path:
    """time_to_loss.py's dataset: reused when it is there, else built the same way."""
    data = work / "data"
    return data if (data / "manifest.json").is_file() else kjv_dataset(work)[1]


def train(data: Path, run_dir: Path, seed: int, flags: list[str], steps: int, eval_every: int) -> dict:
    command = [sys.executable, "-m", "lmkit", "--quiet", "pretrain", str(data), "--out", str(run_dir),
               "--model", LMKIT_MODEL, "--seed", str(seed), "--max-steps", str(steps), "--eval-every",
               str(eval_every), "--checkpoint-every", str(steps), "--no-compile", "--force", *flags]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"pretrain_levers.py: `{' '.join(command[2:])}` failed (exit {proc.returncode})")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(run_dir, ignore_errors=True)
    clock = lmkit_clock(records, checkpoint_every=steps, eval_every=eval_every)
    curve = [{"step": r["step"], "train_s": round(clock["clock"][r["step"]], 2), "val_loss": r["val_loss"]}
             for r in records if "val_loss" in r and r["step"] in clock["clock"]]
    return {"command": "lmkit " + " ".join(command[3:]), "wall_s": round(time.perf_counter() - started, 1),
            "step_s": clock["step_s_median"], "curve": curve, "final_val_loss": curve[-1]["val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    parser.add_argument("--eval-every", type=int, default=50,
                        help="steps between validations, a multiple of 10 (lmkit's --log-every: a curve point needs "
                             "the training seconds logged at its step)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    parser.add_argument("--work", type=Path, default=OUT / "time_to_loss", help="time_to_loss.py's corpus and data")
    args = parser.parse_args()
    if args.eval_every % 10:
        parser.error("--eval-every: a multiple of 10, the steps lmkit logs its clock at")
    levers = ["defaults", *[name for name in args.levers if name != "defaults"]]
    data = dataset(args.work.resolve())
    results: dict = {"model": LMKIT_MODEL, "steps": args.steps, "eval_every": args.eval_every, "cores": os.cpu_count(),
                     "levers": {name: LEVERS[name] for name in levers}, "seeds": []}
    for seed in range(args.seeds):
        order = levers[seed % len(levers):] + levers[:seed % len(levers)]
        runs = {}
        for name in order:
            print(f"seed {seed}: {name} ...", file=sys.stderr, flush=True)
            runs[name] = train(data, args.work / f"lever-{name}-seed{seed}", seed, LEVERS[name], args.steps,
                               args.eval_every)
        target = runs["defaults"]["final_val_loss"]
        for run in runs.values():
            run["time_to_target"] = crossing(run["curve"], target)
        results["seeds"].append({"seed": seed, "order": order, "target": target, "runs": runs})
        (OUT / "pretrain_levers.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)


def report(results: dict) -> None:
    seeds = results["seeds"]
    targets = ", ".join(format(seed["target"], ".4f") for seed in seeds)
    print(f"\n{results['model']}, {results['steps']} steps, eager, {len(seeds)} seed(s); target: the defaults' "
          f"validation loss at their last step ({targets})\n")
    print("| lever | val loss at the last step | s/step | training s to the target | / defaults |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in results["levers"]:
        runs = [s["runs"][name] for s in seeds]
        losses = [r["final_val_loss"] for r in runs]
        times = [r["time_to_target"]["seconds"] for r in runs]
        base = [s["runs"]["defaults"]["time_to_target"]["seconds"] for s in seeds]
        ratios = [t / b for t, b in zip(times, base) if t is not None]
        reached = "" if all(t is not None for t in times) else f" ({sum(t is None for t in times)} never)"
        print(f"| {name} | {_mean(losses, '.4f')} | {_mean([r['step_s'] for r in runs], '.3f')} | "
              f"{_mean([t for t in times if t is not None], '.1f')}{reached} | {_mean(ratios, '.2f')} |")


def _mean(values: list[float], spec: str) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(statistics.mean(values), spec)} ± {format(statistics.stdev(values), spec)}"


if __name__ == "__main__":
    main()
