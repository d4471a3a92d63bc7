"""Benchmark pretraining's data reader: the lazy stream read from the shards against the stream built in RAM.

`lmkit pretrain` reads its windows through ``packing.ShardStream``, which reads them from the shard files
(``pread``) and keeps 24 bytes a document in RAM. Until commit BEFORE (default: the commit that introduced it,
``19eadda^``), it built each split's token stream in RAM, 4 bytes a token. This script runs them side by side on
two datasets of unique documents (Python's bundled documentation, as benchmarks/preprocess.py builds them), one
ten times the other, and reports each run's peak RSS and training tokens/s:

    python benchmarks/lazy_data.py                 # 20 MB and 200 MB of text (about 4 and 42 M tokens)
    python benchmarks/lazy_data.py --mb 5 --rounds 1

The earlier reader runs from a git worktree of BEFORE (made under benchmarks/out/, removed afterwards), with
the same Python and packages; a third side runs this commit with the stream copied into RAM (``read_stream``),
so that the reader's own cost is apart from everything else that changed since BEFORE. Each run is a fresh
process training gpt-tiny for --steps steps of 32 x 128 tokens; the sides alternate, tokens/s is the best of
the rounds (the median of each run's logged rates after the first log), RSS the peak measured. Results go to
stdout and benchmarks/out/lazy_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import run_preprocess, write_corpus  # noqa: E402  (benchmarks/preprocess.py)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"

_RUN = """
import json, resource, statistics, sys
from pathlib import Path
import lmkit
from lmkit.config import resolve
from lmkit.progress import reporter
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
reporter.configure(quiet=True)
settings = json.loads(sys.argv[1])
if settings.pop("in_ram", False):  # this commit's code with the stream copied into RAM (packing.read_stream)
    import lmkit.training.objectives.language_modeling as objectives
    from lmkit.data.packing import read_stream
    objectives.load_stream = lambda datasets, split, separator: read_stream(datasets if not isinstance(datasets, list)
                                                                            else datasets[0], split, separator)
pretrain.run(resolve(PretrainConfig, {}, settings))
rates = [r["tokens_per_s"] for r in map(json.loads, (Path(settings["out"]) / "metrics.jsonl").read_text().splitlines())
         if "tokens_per_s" in r][1:]
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rss_mb": usage.ru_maxrss / 1024, "major_faults": usage.ru_majflt, "minor_faults": usage.ru_minflt,
                  "tokens_per_s": statistics.median(rates), "lmkit": lmkit.__file__}))
"""


def dataset(mb: int, seed: int, tokenizer: Path | None) -> Path:
    out = OUT / f"lazy-data-{mb}mb"
    if not (out / "manifest.json").exists():
        corpus = OUT / f"corpus-{mb}mb-seed{seed}"
        write_corpus(corpus, mb, seed)
        run_preprocess(corpus, out, 2, tokenizer=tokenizer, near_dedup=False)
    return out


def train(code: Path, data: Path, steps: int, in_ram: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as work:
        settings = {"dataset": [str(data)], "out": str(Path(work) / "run"), "model": "gpt-tiny", "seq_len": 128,
                    "micro_batch": 32, "max_steps": steps, "eval_every": 0, "checkpoint_every": 0, "log_every": 5,
                    "compile": False, "precision": "fp32", "threads": 2, **({"in_ram": True} if in_ram else {})}
        result = subprocess.run([sys.executable, "-c", _RUN, json.dumps(settings)], capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": str(code)}, cwd=code)
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        assert Path(measured.pop("lmkit")).is_relative_to(code), "the run imported another lmkit"
        return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=20, help="the small corpus in MB (the large one is 10x)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default="19eadda^", help="the commit whose reader built the stream in RAM")
    args = parser.parse_args()

    small = dataset(args.mb, 11, None)
    large = dataset(10 * args.mb, 12, small / "tokenizer")
    sizes = {"1x": small, "10x": large}
    worktree = OUT / "lazy-data-before"
    if worktree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree), args.before], check=True,
                   capture_output=True)
    sides = {"lazy (read from the shards)": (ROOT, False), "in RAM (this commit)": (ROOT, True),
             "in RAM (before)": (worktree, False)}
    best: dict = {}
    try:
        for round_ in range(args.rounds):
            order = list(sides.items()) if round_ % 2 == 0 else list(sides.items())[::-1]
            for size, data in sizes.items():
                for side, (code, in_ram) in order:
                    run = train(code, data, args.steps, in_ram)
                    print(f"round {round_ + 1}, {size}, {side}: peak RSS {run['rss_mb']:.0f} MB, "
                          f"{run['tokens_per_s']:,.0f} tokens/s", flush=True)
                    key = best.setdefault(size, {}).setdefault(side, {"rss_mb": 0.0, "tokens_per_s": 0.0})
                    key["rss_mb"] = max(key["rss_mb"], run["rss_mb"])
                    key["tokens_per_s"] = max(key["tokens_per_s"], run["tokens_per_s"])
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)
    results = {"datasets": {size: {"path": str(data), "train_tokens": json.loads((data / "manifest.json").read_text())
                                   ["stats"]["splits"]["train"]["tokens"]} for size, data in sizes.items()},
               "steps": args.steps, "rounds": args.rounds, "before": args.before, "runs": best}
    for side in sides:
        growth = best["10x"][side]["rss_mb"] / best["1x"][side]["rss_mb"]
        results.setdefault("rss_growth_10x", {})[side] = round(growth, 3)
        print(f"{side}: peak RSS {best['1x'][side]['rss_mb']:.0f} MB at 1x, {best['10x'][side]['rss_mb']:.0f} MB at "
              f"10x (x{growth:.2f})")
    for size in sizes:
        for other in ("in RAM (this commit)", "in RAM (before)"):
            ratio = best[size]["lazy (read from the shards)"]["tokens_per_s"] / best[size][other]["tokens_per_s"]
            results.setdefault("speed_ratio", {}).setdefault(size, {})[other] = round(ratio, 3)
            print(f"{size}: tokens/s lazy / {other} = {ratio:.3f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "lazy_data.json").write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(OUT / "lazy-data-before", ignore_errors=True)


if __name__ == "__main__":
    main()
