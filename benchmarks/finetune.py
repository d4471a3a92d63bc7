"""Benchmark what pretraining is worth to `lmkit finetune`, over several seeds.

`make demo` trains one seed of each docstring classifier; one seed's test accuracy on the 275 held-out
docstrings has a standard error near 0.026, and the training seed moves it by about as much. This script
trains each demo classifier with several seeds, on the demo's own artifacts and its own settings
(examples/finetune-classify.toml), and scores each on the test split, side by side:

* BERT: from the pretrained demo BERT, the same architecture from random weights (``--scratch``), the
  pretrained BERT with ``--token-dropout 0.1`` (augmentation), and with ``--class-weights balanced``;
* GPT: the same three, and LoRA rank 8 (the demo's LoRA settings).

For each base it prints the paired difference against the pretrained run of the same seed (same data,
same order of examples, same head initialisation) and on how many seeds the pretrained run wins.

    python benchmarks/finetune.py                       # 4 seeds: about 4 minutes on 2 cores once the demo exists
    python benchmarks/finetune.py --seeds 8 --bases bert
    python benchmarks/finetune.py --work /tmp/demo      # another demo directory (built first if missing)

The demo's data and pretrained models come from `make -C examples data pretrain` in --work (nothing is
redone when they are up to date). Results go to stdout (with a markdown table) and
benchmarks/out/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lmkit.config import load_toml, resolve
from lmkit.progress import reporter
from lmkit.stages import evaluate, finetune
from lmkit.stages.evaluate_config import EvaluateConfig
from lmkit.stages.finetune_config import FinetuneConfig

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
SETTINGS = ROOT / "examples" / "finetune-classify.toml"
# base -> {variant: flags on top of the demo's settings}; "pretrained" is what the others are compared with.
VARIANTS = {
    "bert": {"pretrained": {}, "scratch": {"scratch": True}, "token-dropout": {"token_dropout": 0.1},
             "balanced": {"class_weights": "balanced"}},
    "gpt": {"pretrained": {}, "scratch": {"scratch": True}, "token-dropout": {"token_dropout": 0.1},
            "lora": {"lora_rank": 8, "lr": 3e-3, "epochs": 10}},  # as classifier-lora in examples/Makefile
}
METRICS = ("accuracy", "macro_f1")


def build_demo(work: Path) -> None:
    lmkit = Path(sys.executable).parent / "lmkit"
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT / "examples"), f"LMKIT={lmkit}",
                    f"WORK={work.resolve()}", "data", "pretrain"], check=True, stdout=subprocess.DEVNULL)


def score(base: Path, labeled: Path, seed: int, flags: dict, scratch_dir: Path) -> dict:
    """Train one classifier and return its test-split metrics."""
    run = scratch_dir / "run"
    values = {"base": str(base), "data": str(labeled), "out": str(run), "force": True, "seed": seed, **flags}
    finetune.run(resolve(FinetuneConfig, load_toml(SETTINGS), values, config_path=SETTINGS))
    report = evaluate.run(resolve(EvaluateConfig, {}, {"checkpoint": str(run / "final"), "data": [str(labeled)],
                                                       "split": "test"})).report
    return {name: report["metrics"][name] for name in METRICS}


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per variant: mean and standard deviation over seeds; against "pretrained": the mean paired
    difference and the seeds where pretrained wins, ties and loses (on accuracy)."""
    summary = {}
    for variant, rows in runs.items():
        entry = {}
        for name in METRICS:
            values = [row[name] for row in rows]
            entry[name] = {"mean": round(statistics.fmean(values), 4),
                           "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}
        if variant != "pretrained":
            for name in METRICS:
                diffs = [p[name] - row[name] for p, row in zip(runs["pretrained"], rows)]
                entry[f"pretrained_minus_this_{name}"] = round(statistics.fmean(diffs), 4)
            diffs = [p["accuracy"] - row["accuracy"] for p, row in zip(runs["pretrained"], rows)]
            entry["pretrained_wins_ties_losses"] = [sum(d > 1e-9 for d in diffs), sum(abs(d) <= 1e-9 for d in diffs),
                                                    sum(d < -1e-9 for d in diffs)]
        summary[variant] = entry
    return summary


def markdown(results: dict) -> str:
    lines = ["| base | variant | accuracy (mean ± sd) | macro F1 (mean ± sd) | pretrained − this: accuracy, F1 "
             "| pretrained wins / ties / losses |", "|---|---|---|---|---|---|"]
    for base, summary in results["summary"].items():
        for variant, entry in summary.items():
            acc, f1 = entry["accuracy"], entry["macro_f1"]
            versus = ("" if variant == "pretrained" else
                      f"{entry['pretrained_minus_this_accuracy']:+.3f}, {entry['pretrained_minus_this_macro_f1']:+.3f}")
            record = "" if variant == "pretrained" else "/".join(map(str, entry["pretrained_wins_ties_losses"]))
            lines.append(f"| {base} | {variant} | {acc['mean']:.3f} ± {acc['sd']:.3f} | "
                         f"{f1['mean']:.3f} ± {f1['sd']:.3f} | {versus} | {record} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "demo", help="demo directory (as `make demo` makes it)")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 of every variant")
    parser.add_argument("--bases", default="bert,gpt", help="comma-separated: bert, gpt")
    args = parser.parse_args()
    bases = [base for base in args.bases.split(",") if base]
    unknown = [base for base in bases if base not in VARIANTS]
    if unknown or args.seeds < 1:
        parser.error(f"--bases takes {', '.join(VARIANTS)}; --seeds at least 1")
    build_demo(args.work)
    reporter.configure(quiet=True)
    labeled = args.work / "labeled"
    results = {"work": str(args.work), "settings": str(SETTINGS.relative_to(ROOT)), "seeds": args.seeds,
               "runs": {}, "summary": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_dir:
        for base in bases:
            runs = {variant: [] for variant in VARIANTS[base]}
            for seed in range(args.seeds):
                for variant, flags in VARIANTS[base].items():
                    runs[variant].append(score(args.work / base / "final", labeled, seed, flags, Path(scratch_dir)))
                    row = runs[variant][-1]
                    print(f"{base:4s} {variant:13s} seed {seed}: accuracy {row['accuracy']:.3f}, "
                          f"macro F1 {row['macro_f1']:.3f}", flush=True)
            results["runs"][base] = runs
            results["summary"][base] = summarize(runs)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(results))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "finetune.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"{results['seconds']:.0f} s; wrote {OUT / 'finetune.json'}")


if __name__ == "__main__":
    main()
