"""Issue 20's long-text measurements on a long-document set built from packaged text: Debian's manual pages
(groff renders them; nothing is downloaded; Google Cloud's 16,600 near-identical pages left out), classified by
section (1 commands, 3 library calls, 5 file
formats, 7 overviews, 8 administration). The pages are far longer than a small model's window.

    python benchmarks/long_text.py            # every stage; each skips what is already done
    python benchmarks/long_text.py --stage report

Stages:
  corpus    render pages (header and footer lines dropped: they name the section): labeled.jsonl (up to 150
            a section, the first 8,000 characters), unlabeled.jsonl (3,000 other pages, the first 20,000
            characters, for pretraining)
  pretrain  preprocess both, pretrain a GPT with --budget 5m and a 128-token context
  classify  finetune --long-text cut and --long-text mean (seed 0, 3 epochs), evaluate each model on the
            test split reading long pages cut, or as chunks averaged (mean) or maxed (max)
  context   continue pretraining 150 steps at 128 tokens (control), and at 512 with --block-size 512
            (linear position interpolation, and NTK); perplexity on the validation pages at 128 and 512
  report    the tables (benchmarks/out/long_text.json)
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
LMKIT = [sys.executable, "-m", "lmkit"]
SECTIONS = ("1", "3", "5", "7", "8")
MAN = Path("/usr/share/man")


def lmkit(work: Path, *args: str) -> None:
    started = time.monotonic()
    print("$ lmkit " + " ".join(args), flush=True)
    with open(work / "log.txt", "a") as log:
        result = subprocess.run([*LMKIT, *args], stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"lmkit {' '.join(args)} failed ({result.returncode}); see {work / 'log.txt'}")
    print(f"  done in {time.monotonic() - started:.0f} s", flush=True)


def done(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def render(path: Path) -> str:
    """A manual page as plain text (groff, no formatting characters), without its header and footer lines,
    which name the section ("LS(1) User Commands LS(1)"): the label would be in the text."""
    source = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    result = subprocess.run(["groff", "-man", "-Tutf8", "-P-cbou"], input=source, capture_output=True, timeout=30)
    lines = [line for line in result.stdout.decode("utf-8", "replace").splitlines() if line.strip()]
    return " ".join(" ".join(lines[1:-1]).split())


def corpus(work: Path) -> None:
    if (work / "labeled.jsonl").is_file():
        return
    rng = random.Random(0)
    # (Google Cloud's CLI ships 16,600 pages of man1, all alike: they would make the section trivial.)
    pages = {section: sorted(p for p in (MAN / f"man{section}").glob("*") if not p.name.startswith("gcloud"))
             for section in SECTIONS}
    if not pages["1"]:
        raise SystemExit(f"{MAN}: no manual pages here (install man-db and some packages)")
    labeled, used = [], set()
    for section in SECTIONS:
        chosen = rng.sample(pages[section], min(150, len(pages[section])))
        for path in chosen:
            text = render(path)[:8000]
            if len(text) > 500:
                labeled.append({"text": text, "label": f"man{section}"})
                used.add(path)
    rest = [path for section in SECTIONS for path in pages[section] if path not in used]
    unlabeled = []
    for path in rng.sample(rest, min(3000, len(rest))):
        text = render(path)[:20000]
        if len(text) > 500:
            unlabeled.append({"text": text})
    rng.shuffle(labeled)
    for name, records in (("unlabeled.jsonl", unlabeled), ("labeled.jsonl", labeled)):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"corpus: {len(labeled)} labeled pages, {len(unlabeled)} unlabeled", flush=True)


def pretrain(work: Path) -> None:
    if not done(work / "data"):
        lmkit(work, "preprocess", str(work / "unlabeled.jsonl"), "--filters", "none", "--out", str(work / "data"),
              "--force")
    if not done(work / "labeled"):
        lmkit(work, "preprocess", str(work / "labeled.jsonl"), "--label-field", "label", "--tokenizer",
              str(work / "data" / "tokenizer"), "--val-fraction", "0.1", "--test-fraction", "0.3", "--filters", "none",
              "--no-near-dedup", "--out", str(work / "labeled"), "--force")
    if not done(work / "gpt" / "final"):
        lmkit(work, "pretrain", str(work / "data"), "--budget", "5m", "--block-size", "128", "--seq-len", "128",
              "--out", str(work / "gpt"), "--force")


def evaluate(work: Path, checkpoint: Path, data: Path, name: str, *flags: str) -> dict:
    out = work / "reports" / name
    if not done(out):
        lmkit(work, "evaluate", str(checkpoint), str(data), *flags, "--out", str(out), "--force")
    report = json.loads((out / "report.json").read_text())
    return {**report["metrics"], "method": report["method"]}


def classify(work: Path) -> dict:
    results = {}
    for training in ("cut", "mean"):
        run = work / f"clf-{training}"
        if not done(run / "final"):
            lmkit(work, "finetune", str(work / "gpt" / "final"), str(work / "labeled"), "--long-text", training,
                  "--epochs", "3", "--seed", "0", "--out", str(run), "--force")
        for reading in ("cut", "mean", "max"):
            metrics = evaluate(work, run / "final", work / "labeled", f"clf-{training}-{reading}", "--split", "test",
                               "--long-text", reading)
            results[f"trained {training}, read {reading}"] = {
                "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                "chunked_documents": metrics["method"].get("chunked_documents", 0)}
    return results


def context(work: Path) -> dict:
    runs = {"control-128": ("--seq-len", "128"), "linear-512": ("--block-size", "512"),
            "ntk-512": ("--block-size", "512", "--rope-scaling", "ntk")}
    limit = ("--limit", "30")  # the first 30 validation pages (each up to 20,000 characters)
    results = {"base": {"ppl@128": evaluate(work, work / "gpt" / "final", work / "data", "lm-base-128", *limit)["ppl"]}}
    for name, flags in runs.items():
        run = work / name
        if not done(run / "final"):
            lmkit(work, "finetune", str(work / "gpt" / "final"), str(work / "data"), *flags, "--max-steps", "150",
                  "--micro-batch", "8", "--eval-every", "50", "--out", str(run), "--force")
        row = {"ppl@128": evaluate(work, run / "final", work / "data", f"lm-{name}-128", "--window", "128",
                                   *limit)["ppl"]}
        if name != "control-128":
            row["ppl@512"] = evaluate(work, run / "final", work / "data", f"lm-{name}-512", "--window", "512",
                                      *limit)["ppl"]
        results[name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("all", "corpus", "pretrain", "classify", "context", "report"),
                        default="all")
    parser.add_argument("--work", default="/tmp/longtext")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = ("corpus", "pretrain", "classify", "context") if args.stage in ("all", "report") else (args.stage,)
    results = {}
    for stage in stages:
        if stage == "corpus":
            corpus(work)
        elif stage == "pretrain":
            corpus(work)
            pretrain(work)
        elif stage == "classify":
            results["classify"] = classify(work)
        elif stage == "context":
            results["context"] = context(work)
    if results:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "long_text.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
