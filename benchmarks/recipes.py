"""Issue 16's experiment: the default recipe against the TF-IDF baseline on real labeled corpora the demo
never saw, as a new user would run it.

For each corpus of ``benchmarks/corpora.py`` (Debian package descriptions by section, fortune cookies by
file, WordNet glosses by supersense; unlabeled text from the same source):

    lmkit preprocess unlabeled.jsonl --out data                          # its own tokenizer, defaults
    lmkit preprocess labeled.jsonl --label-field label --tokenizer data/tokenizer \\
        --val-fraction 0.1 --test-fraction 0.3 --filters none --no-near-dedup --out labeled
    lmkit pretrain data --budget 15m --out gpt                           # the budget dial
    lmkit finetune gpt/final labeled --seed S --out clf-S                # finetuning's defaults
    lmkit evaluate clf-S/final labeled --split test --baseline           # beside TF-IDF + logistic regression

and, with ``--curve``, accuracy against the number of labeled examples (``--max-train-examples``) for the
pretrained model, the same architecture from random weights (``--scratch``) and the baseline.

    python benchmarks/recipes.py --stage pretrain     # the 15-minute pretraining runs, one corpus after another
    python benchmarks/recipes.py --stage finetune --seeds 0,1,2
    python benchmarks/recipes.py --stage curve
    python benchmarks/recipes.py --stage pooling      # seed 0 with --pooling last beside the default mean
    python benchmarks/recipes.py --stage scale --only debian --budgets 5m,15m,30m   # what more pretraining buys
    python benchmarks/recipes.py --stage report       # the table (also written to benchmarks/out/recipes.json)

Every stage skips what is already done, so the stages can be run (and rerun) separately.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
CORPORA = ("debian", "fortunes", "wordnet")
LMKIT = [sys.executable, "-m", "lmkit"]


def lmkit(*args: str, log: Path | None = None) -> None:
    started = time.monotonic()
    print("$ lmkit " + " ".join(args), flush=True)
    with (open(log, "a") if log else open("/dev/null", "w")) as sink:
        result = subprocess.run([*LMKIT, *args], stdout=sink if log else None,
                                stderr=subprocess.STDOUT if log else None)
    if result.returncode != 0:
        raise SystemExit(f"lmkit {' '.join(args)} failed ({result.returncode}); see {log}")
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)


def done(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def data(corpus: Path, work: Path) -> None:
    if not done(work / "data"):
        lmkit("preprocess", str(corpus / "unlabeled.jsonl"), "--out", str(work / "data"), "--force",
              log=work / "log.txt")
    if not done(work / "labeled"):
        lmkit("preprocess", str(corpus / "labeled.jsonl"), "--label-field", "label", "--tokenizer",
              str(work / "data" / "tokenizer"), "--val-fraction", "0.1", "--test-fraction", "0.3", "--filters", "none",
              "--no-near-dedup", "--out", str(work / "labeled"), "--force", log=work / "log.txt")


def pretrain(work: Path, budget: str, name: str = "gpt") -> Path:
    if not done(work / name / "final"):
        lmkit("pretrain", str(work / "data"), "--budget", budget, "--out", str(work / name), "--force",
              log=work / "log.txt")
    return work / name / "final"


def lm_metrics(work: Path, checkpoint: Path, name: str = "lm") -> dict:
    """The language model against the trigram, on the unlabeled text's validation split."""
    report = work / "reports" / name
    if not done(report):
        lmkit("evaluate", str(checkpoint), str(work / "data"), "--baseline", "--out", str(report), "--force",
              log=work / "log.txt")
    return json.loads((report / "report.json").read_text())["metrics"]


def evaluate(checkpoint: Path, work: Path, out: Path, baseline: bool = True) -> dict:
    if not done(out):
        lmkit("evaluate", str(checkpoint), str(work / "labeled"), "--split", "test",
              *(["--baseline"] if baseline else []), "--out", str(out), "--force", log=work / "log.txt")
    return json.loads((out / "report.json").read_text())["metrics"]


def finetune(work: Path, seed: int, extra: tuple[str, ...] = (), name: str | None = None,
             baseline: bool = True, body: str = "gpt") -> dict:
    name = name or f"clf-{seed}"
    if not done(work / name / "final"):
        lmkit("finetune", str(work / body / "final"), str(work / "labeled"), "--seed", str(seed), "--out",
              str(work / name), "--force", *extra, log=work / "log.txt")
    return evaluate(work / name / "final", work, work / "reports" / name, baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("pretrain", "finetune", "curve", "pooling", "scale", "report"),
                        required=True)
    parser.add_argument("--corpora", default="/tmp/corpora", help="where benchmarks/corpora.py wrote them")
    parser.add_argument("--work", default="/tmp/recipes")
    parser.add_argument("--only", default=",".join(CORPORA))
    parser.add_argument("--budget", default="15m")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budgets", default="5m,15m,30m", help="--stage scale: pretraining budgets")
    parser.add_argument("--sizes", default="100,300,0", help="--curve: labeled examples (0: all)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for name in args.only.split(","):
        corpus, work = Path(args.corpora) / name, Path(args.work) / name
        if not (corpus / "labeled.jsonl").is_file():
            raise SystemExit(f"{corpus}: no labeled.jsonl; run python benchmarks/corpora.py --out {args.corpora}")
        work.mkdir(parents=True, exist_ok=True)
        data(corpus, work)
        if args.stage == "pretrain":
            pretrain(work, args.budget)
            continue
        runs = {seed: finetune(work, seed) for seed in seeds} if args.stage in ("finetune", "report") else {}
        entry = {"seeds": seeds, "runs": runs}
        if runs:
            accuracy = [r["accuracy"] for r in runs.values()]
            entry.update(accuracy_mean=statistics.mean(accuracy),
                         accuracy_sd=statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
                         baseline_accuracy=runs[seeds[0]]["baseline_accuracy"])
            pretrained = json.loads((work / "gpt" / "final" / "manifest.json").read_text())["stats"]
            entry["pretrain"] = {k: pretrained.get(k) for k in ("parameters", "step", "tokens", "budget", "seconds")}
            entry["lm"] = lm_metrics(work, work / "gpt" / "final")
        if args.stage == "pooling":  # seed 0 with each pooling a GPT offers; mean (the default) is clf-0
            # (--long-text cut: as clf-0 was trained and evaluated, before long texts were read as chunks)
            entry["pooling"] = {pooling: finetune(work, 0, ("--pooling", pooling, "--long-text", "cut"),
                                                  f"pool-{pooling}" if pooling != "mean" else None, False)["accuracy"]
                                for pooling in ("mean", "last")}
        if args.stage == "scale":  # seed 0 on GPTs pretrained with other budgets: what more compute buys
            scale = {}
            for budget in args.budgets.split(","):
                body = "gpt" if budget == args.budget else f"gpt-{budget}"
                checkpoint = pretrain(work, budget, body)
                stats = json.loads((checkpoint / "manifest.json").read_text())["stats"]
                lm = lm_metrics(work, checkpoint, "lm" if body == "gpt" else f"lm-{budget}")
                accuracy = finetune(work, 0, (), None if body == "gpt" else f"clf-0-{budget}", False, body)["accuracy"]
                scale[budget] = {"parameters": stats.get("parameters"), "tokens": stats.get("tokens"),
                                 "bits_per_byte": lm.get("bpb"),
                                 "baseline_bits_per_byte": lm.get("baseline_bpb"), "accuracy": accuracy}
            entry["scale"] = scale
        if args.stage == "curve":
            curve = {}
            for size in [int(s) for s in args.sizes.split(",")]:
                limit = ("--max-train-examples", str(size)) if size else ()
                tag = size or "all"
                curve[str(tag)] = {  # seed 0; all examples with pretraining is the finetune stage's seed 0
                    "pretrained": finetune(work, 0, limit, f"curve-{tag}" if size else None, False)["accuracy"],
                    "scratch": finetune(work, 0, (*limit, "--scratch"), f"curve-{tag}-scratch", False)["accuracy"],
                    "baseline": _baseline_at(work, size),
                }
            entry["curve"] = curve
        results[name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "runs"}}, indent=1), flush=True)
    if results:
        OUT.mkdir(parents=True, exist_ok=True)
        target = OUT / f"recipes-{args.stage}.json"
        target.write_text(json.dumps(results, indent=1))
        print(f"written {target}")


def _baseline_at(work: Path, size: int) -> float:
    """The TF-IDF baseline trained on the same seeded subset of train that --max-train-examples takes."""
    import numpy as np

    from lmkit import artifacts
    from lmkit.data.labeled import labeled_splits
    from lmkit.data.split import seeded_subset
    from lmkit.evaluation import baselines, inputs
    from lmkit.tokenizer import Tokenizer

    dataset = artifacts.load(work / "labeled", kind="dataset")
    tokenizer = Tokenizer.from_artifact(work / "labeled" / "tokenizer")
    train, validation, names, _ = labeled_splits(dataset, 0.1, 0)
    if size:
        chosen = seeded_subset(len(train.tokens), size, 0)
        train = train.subset(np.asarray(chosen))
    test = inputs.from_dataset(dataset, "test")
    text = lambda tokens: tokenizer.decode(np.asarray(tokens).tolist())  # noqa: E731
    fitted = baselines.tfidf_classifier([text(t) for t in train.tokens], np.array([names[i] for i in train.labels]),
                                        [text(t) for t in validation.tokens],
                                        np.array([names[i] for i in validation.labels]), [text(t) for t in test.tokens])
    return float(np.mean(fitted.predictions == np.array(test.labels)))


if __name__ == "__main__":
    main()
