"""MLM+SOP against MLM alone at the same steps, on the demo corpus: masked-LM accuracy, and accuracy on two
downstream pair-classification tasks over seeds.

    python benchmarks/sentence_objectives.py [--work DIR] [--seeds 0 1] [--finetune-seeds 0 1] [--split-by file]

For each pretraining seed, the demo BERT's recipe (examples/pretrain-bert.toml: encoder-tiny, 1,500 steps of
16 x 128 tokens) with --objective mlm and --objective mlm+sop, on the demo's pretraining text (Python's
topics and stdlib docstrings, one document per paragraph as the demo preprocesses it, or per file with
--split-by file: sentence pairs come from documents of two sentences or more). Then:

* masked-LM accuracy, both models scored by ``lmkit evaluate --task lm`` on the same packed validation
  windows (an SOP model's own validation reads pair windows, which differ);
* two pair tasks on the docstrings of the labeled modules (which pretraining never reads), finetuned with the
  demo classifier's recipe (examples/finetune-classify.toml, mean pooling for both, 3 epochs) for each
  finetuning seed, accuracy on their held-out test files:
  - ``next``: does sentence B follow sentence A in a docstring, or is B a sentence of another docstring
    (balanced; the test set is every fifth docstring);
  - ``match``: the demo's pairs.jsonl, a docstring's first line and its own rest or another's.

Runs already made in --work are reused (lmkit answers "up to date"). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LMKIT = [sys.executable, "-m", "lmkit"]
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def lmkit(*args: str) -> None:
    subprocess.run([*LMKIT, *args], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)


def report(directory: Path) -> dict:
    return json.loads((directory / "report.json").read_text())["metrics"]


def next_sentence_task(docstrings: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Consecutive sentences of a docstring (next) or a sentence and one of another docstring (random)."""
    records = [json.loads(line) for line in docstrings.read_text().splitlines()]
    sentences = [[s for s in _SENTENCE.split(" ".join(r["text"].split())) if len(s.split()) >= 3] for r in records]
    rng = random.Random(seed)
    train, test = [], []
    for index, own in enumerate(sentences):
        for first, second in itertools.pairwise(own):
            other = rng.choice([i for i in range(len(sentences)) if i != index and sentences[i]])
            for text_pair, label in ((second, "next"), (rng.choice(sentences[other]), "random")):
                (test if index % 5 == 0 else train).append({"text": first, "text_pair": text_pair, "label": label})
    paths = out / "next.jsonl", out / "next-test.jsonl"
    for path, rows in zip(paths, (train, test)):
        rng.shuffle(rows)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "out" / "sentence")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--finetune-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--split-by", choices=("paragraph", "file"), default="paragraph",
                        help="documents of the pretraining text (lmkit preprocess --split-by)")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    corpus, data = work / "corpus", work / "data"
    if not (corpus / "docstrings.jsonl").exists():
        lmkit("demo-corpus", "--out", str(corpus))
    lmkit("preprocess", str(corpus / "topics"), str(corpus / "stdlib"), "--split-by", args.split_by, "--out", str(data))
    tokenizer = str(data / "tokenizer")
    tasks = {}
    train, test = next_sentence_task(corpus / "docstrings.jsonl", work)
    for name, train_file, test_file in (("next", train, test),
                                        ("match", corpus / "pairs.jsonl", corpus / "pairs-test.jsonl")):
        lmkit("preprocess", str(train_file), "--text-pair-field", "text_pair", "--label-field", "label", "--tokenizer",
              tokenizer, "--val-fraction", "0.1", "--out", str(work / f"{name}-data"))
        tasks[name] = (work / f"{name}-data", test_file)
    results: dict[str, dict[str, list[float]]] = {}
    for objective in ("mlm", "mlm+sop"):
        scores = results.setdefault(objective, {"mlm_accuracy": [], **{name: [] for name in tasks}})
        for seed in args.seeds:
            run = work / f"{objective.replace('+', '-')}-s{seed}"
            lmkit("pretrain", str(data), "--config", str(ROOT / "examples" / "pretrain-bert.toml"), "--objective",
                  objective, "--seed", str(seed), "--out", str(run))
            lmkit("evaluate", str(run / "final"), str(data), "--task", "lm", "--out", str(run / "report-lm"))
            scores["mlm_accuracy"].append(report(run / "report-lm")["mlm_accuracy"])
            for name, (dataset, test_file) in tasks.items():
                for finetune_seed in args.finetune_seeds:
                    classifier = work / f"{run.name}-{name}-f{finetune_seed}"
                    lmkit("finetune", str(run / "final"), str(dataset), "--config",
                          str(ROOT / "examples" / "finetune-classify.toml"), "--pooling", "mean", "--epochs", "3",
                          "--seed", str(finetune_seed), "--out", str(classifier))
                    lmkit("evaluate", str(classifier / "final"), str(test_file), "--text-pair-field", "text_pair",
                          "--out", str(classifier / "report"))
                    scores[name].append(report(classifier / "report")["accuracy"])
            print(f"{objective} seed {seed}: " +
                  ", ".join(f"{k} {v[-len(args.finetune_seeds):] if k in tasks else v[-1]}"
                            for k, v in scores.items()), flush=True)
    print(f"\n| pretraining | MLM accuracy (seeds {args.seeds}) | " +
          " | ".join(f"{name} test accuracy, mean ± sd of {len(args.seeds) * len(args.finetune_seeds)}"
                     for name in tasks) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in tasks) + " |")
    for objective, scores in results.items():
        cells = [" / ".join(f"{v:.3f}" for v in scores["mlm_accuracy"])]
        cells += [f"{statistics.mean(scores[name]):.3f} ± {statistics.pstdev(scores[name]):.3f}" for name in tasks]
        print(f"| {objective} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
