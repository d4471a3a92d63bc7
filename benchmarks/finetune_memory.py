"""Resident memory of lmkit finetuning step by step: RSS and glibc's heap (mallinfo2) after every optimizer step.

The run is benchmarks/finetune_peer.py's lmkit side (all-MiniLM-L6-v2 on the fortunes, ``lmkit finetune`` with its
defaults, batch 8), in this process. Reported: examples/s over the training steps (validation excluded), peak RSS,
RSS and the heap's in-use bytes after N and 3N steps (N: a third of the run; issue 30 asks for RSS flat over a run),
and each step at which the heap grew, with the batch's width. A leak grows the in-use bytes; freed memory kept
for reuse grows the heap but not the in-use bytes.

    python benchmarks/finetune_memory.py                       # one epoch: about 70 s on 2 cores
    python benchmarks/finetune_memory.py --widths multiple8    # batches padded to a multiple of 8, as before
    python benchmarks/finetune_memory.py --trim-every 1        # malloc_trim(0) after every step
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=0 python benchmarks/finetune_memory.py   # levers set in the environment
    MALLOC_TOP_PAD_=0 python benchmarks/finetune_memory.py     # any MALLOC_* variable: glibc's own thresholds

Results go to stdout and benchmarks/out/finetune_memory.json. Linux with glibc only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_peer import BATCH, OUT, WORK, prepare  # noqa: E402  (the same model, data and batch)


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


LIBC = ctypes.CDLL("libc.so.6")
LIBC.mallinfo2.restype = MallInfo2


def memory() -> dict:
    """RSS, the heap's size (main arena and others, plus mmapped chunks) and its in-use bytes, in MB."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * resource.getpagesize()
    info = LIBC.mallinfo2()
    return {"rss_mb": rss / 2**20, "heap_mb": (info.arena + info.hblkhd) / 2**20,
            "in_use_mb": (info.uordblks + info.hblkhd) / 2**20}


def multiple_of_8(longest: int) -> int:
    return -(-int(longest) // 8) * 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                        help="an lmkit finetune setting for this run (e.g. --flag precision=fp32), repeatable")
    parser.add_argument("--widths", choices=("buckets", "multiple8"), default="buckets",
                        help="buckets: lmkit's padded_width; multiple8: each batch padded to a multiple of 8 (before)")
    parser.add_argument("--trim-every", type=int, default=0, help="malloc_trim(0) after every this many steps")
    args = parser.parse_args()

    _, checkpoint, data = prepare()
    import lmkit.data.framing as framing
    import lmkit.training.loop as loop
    from lmkit.config import resolve
    from lmkit.progress import reporter
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    if args.widths == "multiple8":
        framing.padded_width = multiple_of_8  # pad_rows looks it up at each call
    steps: list[dict] = []
    train_step = loop.train_step

    def measured_step(parts, layout, env, step, *rest, **named):
        started = time.perf_counter()
        result = train_step(parts, layout, env, step, *rest, **named)
        seconds = time.perf_counter() - started
        if args.trim_every and (step + 1) % args.trim_every == 0:
            LIBC.malloc_trim(0)
        width = parts.objective.train_batch(step, 0, env.rank)["idx"].shape[1]  # a pure function of the step
        steps.append({"step": step + 1, "width": width, "seconds": seconds, **memory()})
        return result

    loop.train_step = measured_step
    flags = {}
    for item in args.flag:
        name, _, value = item.partition("=")
        flags[name] = {"true": True, "false": False}.get(value.lower(), value)
    out = WORK / "run-memory"
    shutil.rmtree(out, ignore_errors=True)
    reporter.configure(quiet=True)
    config = resolve(FinetuneConfig, {}, {"base": str(checkpoint), "data": str(data), "out": str(out), "force": True,
                                          "micro_batch": BATCH, "epochs": args.epochs, "seed": args.seed, **flags})
    finetune.run(config)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    n = len(steps) // 3
    after_n, after_3n = steps[n - 1], steps[-1]
    speed = len(steps) * BATCH / sum(s["seconds"] for s in steps)
    print(f"{len(steps)} steps, {len({s['width'] for s in steps})} batch widths, {speed:.1f} examples/s (training "
          f"steps), peak RSS {peak:,.0f} MB")
    print("the heap grew at:")
    heap = 0.0
    for s in steps:
        if s["heap_mb"] > heap + 8:
            print(f"  step {s['step']:5d}, width {s['width']:3d}: RSS {s['rss_mb']:6,.0f} MB, "
                  f"heap {s['heap_mb']:6,.0f}, in use {s['in_use_mb']:5,.0f}")
        heap = max(heap, s["heap_mb"])
    for label, s in ((f"after N = {n} steps", after_n), (f"after 3N = {len(steps)} steps", after_3n)):
        print(f"{label:24s} RSS {s['rss_mb']:6,.0f} MB, heap {s['heap_mb']:6,.0f}, in use {s['in_use_mb']:5,.0f}")
    growth = after_3n["rss_mb"] / after_n["rss_mb"] - 1
    print(f"RSS from N to 3N steps: {growth:+.1%} (flat: within 5%): {'MET' if growth <= 0.05 else 'NOT MET'}")
    results = {"epochs": args.epochs, "flags": flags, "widths": args.widths, "trim_every": args.trim_every,
               "examples_per_s": speed, "peak_rss_mb": peak, "after_n": after_n, "after_3n": after_3n,
               "rss_growth": growth, "steps": steps}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "finetune_memory.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
