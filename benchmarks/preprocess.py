"""Benchmark `lmkit preprocess` against the per-core ceiling of plain SentencePiece encoding.

One run measures, on a generated corpus of unique documents (default 100 MB):

* end-to-end MB/s and tokens/s of `lmkit preprocess` with 1 and 2 workers, and peak RSS
  (main process and largest worker), each run in a fresh subprocess;
* the ceiling: a plain single-process loop of `SentencePieceProcessor.encode` over the same
  cleaned documents with the same tokenizer (nothing else: no reading, cleaning, dedup, writing);
* the ratio ours(N workers) / (N x ceiling), with the tokenizer trained in the run (the default: a new
  corpus gets its own tokenizer, so training belongs to the timed run) and without it (``--tokenizer``
  reusing the one just trained), and without near dedup; where the time goes (the stage's
  ``phase_seconds``), and the tokenizing pass alone against the ceiling;
* peak memory again on a corpus twice as large, to show it stays flat.

    python benchmarks/preprocess.py            # 100 MB and 200 MB corpora (several minutes)
    python benchmarks/preprocess.py --mb 20    # a quick look

Results go to stdout and benchmarks/out/preprocess.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def sentence_pool() -> list[str]:
    """Sentences of Python's bundled documentation: real English prose with code words."""
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics.values())
    sentences = [" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text)]
    return sorted({s for s in sentences if 6 <= len(s.split()) <= 60 and "..." not in s and "#" not in s})


def write_corpus(directory: Path, megabytes: int, seed: int) -> int:
    """Unique documents (random sentence mixtures), written as paragraph-separated .txt files."""
    marker = directory / ".complete"
    if marker.exists():
        return int(marker.read_text())
    directory.mkdir(parents=True, exist_ok=True)
    pool = sentence_pool()
    rng = random.Random(seed)
    target, written, file_index = megabytes * 1_000_000, 0, 0
    while written < target:
        with open(directory / f"part-{file_index:03d}.txt", "w", encoding="utf-8") as f:
            file_bytes = 0
            while file_bytes < 10_000_000 and written + file_bytes < target:
                doc = " ".join(rng.choice(pool) for _ in range(rng.randint(4, 24))) + "\n\n"
                f.write(doc)
                file_bytes += len(doc.encode("utf-8"))
        written += file_bytes
        file_index += 1
    marker.write_text(str(written))
    return written


_RUN = """
import json, resource, sys, time
from lmkit.config import resolve
from lmkit.progress import reporter
from lmkit.stages import preprocess
from lmkit.stages.preprocess_config import PreprocessConfig
reporter.configure(quiet=True)
config = resolve(PreprocessConfig, {}, json.loads(sys.argv[1]))
start = time.perf_counter()
artifact = preprocess.run(config)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "stats": artifact.stats,
                  "rss_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_worker_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

_CEILING = """
import json, sys, time
import pyarrow as pa
import sentencepiece as spm
from lmkit.data.cleaning import clean_text
model, corpus = sys.argv[1], sys.argv[2:]
docs = []
for path in corpus:
    with open(path, encoding="utf-8") as f:
        docs += [clean_text(p) for p in f.read().split("\\n\\n") if p.strip()]
sp = spm.SentencePieceProcessor(model_file=model)
n_bytes = sum(len(d.encode()) for d in docs)
start = time.perf_counter()
tokens = 0
for doc in docs:
    tokens += len(sp.encode(doc))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "bytes": n_bytes, "tokens": tokens, "documents": len(docs)}))
"""


def run_preprocess(corpus: Path, out: Path, workers: int, tokenizer: Path | None = None, **extra) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # measure the work, not an "up to date" answer
    settings = {"inputs": [str(corpus)], "out": str(out), "workers": workers, "force": True,
                "vocab_size": 8000, **extra}
    if tokenizer is not None:
        settings["tokenizer"] = str(tokenizer)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", _RUN, json.dumps(settings)], capture_output=True, text=True,
                            env=env, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="corpus size in MB (the doubling run uses twice this)")
    parser.add_argument("--skip-double", action="store_true", help="skip the doubled-corpus memory run")
    args = parser.parse_args()

    corpus = OUT / f"corpus-{args.mb}mb"
    corpus_bytes = write_corpus(corpus, args.mb, seed=1)
    print(f"corpus: {corpus_bytes / 1e6:.1f} MB of unique documents in {corpus}")
    results: dict = {"corpus_mb": corpus_bytes / 1e6, "cores": os.cpu_count()}

    runs = {}
    trained = OUT / "data-1w" / "tokenizer"
    variants = {1: {}, 2: {}, "2, --tokenizer (no training)": {"tokenizer": trained},
                "2, --no-near-dedup": {"near_dedup": False}}
    for name, extra in variants.items():
        workers = name if isinstance(name, int) else 2
        run = run_preprocess(corpus, OUT / f"data-{workers}w" if isinstance(name, int) else OUT / "data-variant",
                             workers, **extra)
        stats = run["stats"]
        runs[name] = {"workers": workers,
            "seconds": round(run["seconds"], 2),
            "input_mb_per_s": round(stats["input_bytes"] / 1e6 / run["seconds"], 2),
            "text_mb_per_s": round(stats["bytes"] / 1e6 / run["seconds"], 2),
            "tokens_per_s": round(stats["tokens"] / run["seconds"]),
            "rss_main_mb": round(run["rss_main_mb"]),
            "rss_worker_mb": round(run["rss_worker_mb"]),
            "documents_kept": stats["documents_kept"],
            "tokens": stats["tokens"],
            "phase_seconds": stats["phase_seconds"],
        }
        print(f"lmkit preprocess, {name} worker(s): {runs[name]}")
    results["lmkit"] = runs

    model = OUT / "data-1w" / "tokenizer" / "tokenizer.model"
    files = sorted(str(p) for p in corpus.glob("*.txt"))
    ceiling = json.loads(subprocess.run([sys.executable, "-c", _CEILING, str(model), *files], capture_output=True,
                                        text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout)
    ceiling_mb_s = ceiling["bytes"] / 1e6 / ceiling["seconds"]
    results["ceiling"] = {"text_mb_per_s": round(ceiling_mb_s, 2),
                          "tokens_per_s": round(ceiling["tokens"] / ceiling["seconds"]),
                          "documents": ceiling["documents"]}
    print(f"ceiling, plain sentencepiece encode loop, 1 process: {results['ceiling']}")
    for name, run in runs.items():
        workers = run["workers"]
        ratio = run["text_mb_per_s"] / (workers * ceiling_mb_s)
        tokenizing = corpus_bytes / 1e6 / run["phase_seconds"]["tokenize_write"] / (workers * ceiling_mb_s)
        run["ratio_to_ceiling"], run["tokenizing_pass_ratio"] = round(ratio, 3), round(tokenizing, 3)
        print(f"ratio ours({name}) / ({workers} x ceiling) = {ratio:.3f}; the tokenizing pass alone {tokenizing:.3f}")

    if not args.skip_double:
        double = OUT / f"corpus-{2 * args.mb}mb"
        write_corpus(double, 2 * args.mb, seed=2)
        run = run_preprocess(double, OUT / "data-double", 2)
        results["double"] = {"corpus_mb": 2 * args.mb, "seconds": round(run["seconds"], 2),
                             "rss_main_mb": round(run["rss_main_mb"]), "rss_worker_mb": round(run["rss_worker_mb"])}
        growth = max(run["rss_main_mb"] / runs[2]["rss_main_mb"], run["rss_worker_mb"] / runs[2]["rss_worker_mb"])
        results["double"]["rss_growth"] = round(growth, 3)
        print(f"doubled corpus, 2 workers: {results['double']} (vs {runs[2]['rss_main_mb']} MB main, "
              f"{runs[2]['rss_worker_mb']} MB worker at {args.mb} MB): peak RSS x{growth:.2f}")

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "preprocess.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
