"""Benchmark `lmkit preprocess` against datatrove: the same pipeline on the same corpus, tokenizer and cores.

The corpus (generated, seeded; default 50 MB of JSONL {"id", "text"} records, in files of about 12.5 MB, at
least 2): documents of 4-24 real English sentences from Python's bundled documentation (``sentence_pool`` of
benchmarks/preprocess.py, less its code-heavy sentences: 993 of 2,288), set on 2-6 lines, with these made on
purpose so that every stage has something to do:

* 8% near duplicates of an earlier document: half with about 1 word in 120 replaced (5-gram Jaccard about 0.9),
  half with about 1 word in 30 replaced (Jaccard about 0.6-0.8, where the LSH S-curve drops);
* 2% exact duplicates of an earlier document;
* 10% low quality: stubs (one "word", some under 20 characters), hashtag spam (a "#" per 2-3 words),
  boilerplate (navigation lines repeated: over 30% of lines repeat), number tables (most words without a letter).

Both sides run with 2 worker processes (``--workers``) on the JSONL files:

* lmkit: ``lmkit --quiet preprocess FILES --out OUT --workers 2 --tokenizer TOK --val-fraction 0 --force``, every
  other setting at its default: NFC cleaning; the filters too_short (< 20 characters), too_long (> 1,000,000),
  few_words (< 3 words), symbols (("#" + "..." + "…") per word > 0.1), repeated_lines (> 30% of non-empty lines
  repeat an earlier one), non_alpha (< 60% of words with a letter); exact dedup; MinHash near dedup (word
  5-grams, 128 permutations, threshold 0.8: 9 bands x 13 rows); tokenizing and writing Arrow shards (shuffled
  in chunks of 10,000 documents).
* datatrove 0.10.1, installed by this script into its own venv (benchmarks/out/datatrove-venv: ``pip install
  'datatrove[processing]' orjson spacy``; no torch): four LocalPipelineExecutors with ``workers=2``, run one
  after the other in one process, as its examples/minhash_deduplication.py does:

  1. JsonlReader -> LambdaFilter (20 <= characters <= 1,000,000: lmkit's too_short and too_long) ->
     GopherQualityFilter(min_doc_words=3, max_symbol_word_ratio=0.1, max_non_alpha_words_ratio=0.6, its other
     rules off) -> GopherRepetitionFilter(dup_line_frac=0.3, its other rules off) -> JsonlWriter (the kept
     documents, uncompressed) -> MinhashDedupSignature; one task per input file;
  2. MinhashDedupBuckets, 9 tasks (one per band; it needs a multiple of the bands);
  3. MinhashDedupCluster, 1 task;
  4. JsonlReader (stage 1's documents) -> MinhashDedupFilter -> DocumentTokenizer(eos_token=None; it shuffles
     the documents, as lmkit does), one task per input file (no DocumentTokenizerMerger).

  MinhashConfig(n_grams=5, num_buckets=9, hashes_per_bucket=13): lmkit's bands and rows, so the same S-curve (a
  pair of 5-gram Jaccard s shares a band with probability 1 - (1 - s^13)^9: 0.40 at 0.8, 0.93 at 0.9, 0.998 at
  0.95; the usual threshold estimate (1/9)^(1/13) is 0.845); 64-bit xxhash, its default.

The same tokenizer: a byte-level BPE (GPT-2's pre-tokenizer, vocabulary up to 8,000: the corpus supports about
6,500) trained with the ``tokenizers`` package on 4 MB of the corpus's ordinary documents before anything is
timed, made an lmkit tokenizer artifact by ``lmkit import``; datatrove reads that artifact's tokenizer.json, the
very same file. Nothing is downloaded at run time (no hub tokenizer), and no EOS is appended on either side
(lmkit stores a row per document), so both write the same tokens for the same document.

Differences that remain (they change which documents are dropped, not the work):

* words: lmkit splits on whitespace; datatrove's Gopher rules and MinHash use its English word tokenizer, spaCy's
  (a blank "en" pipeline: rules, no model), where a punctuation mark is a word of its own and "a-b" is three.
  So its few_words counts words other than punctuation, its symbols ratio divides by more words (more lenient)
  and tests "#" and ellipses separately (lmkit adds them up), and its non_alpha ratio counts punctuation as
  words without a letter (stricter: hence the code-heavy sentences left out of the corpus). datatrove's
  processing extra lacks spaCy (its multilingual extra has it, with tensorflow and a dozen tokenizers for other
  languages): this script installs spacy alone.
* repeated lines: lmkit strips lines and skips empty ones; datatrove splits on runs of newlines.
* MinHash shingles: lmkit lowercases, deletes punctuation, hashes whitespace words (crc32) and permutes in 32
  bits (multiply-shift); datatrove lowercases, turns numbers into 0 and punctuation into spaces, strips
  diacritics, splits with spaCy, hashes 5-grams with xxhash64 and permutes mod 2^61 - 1. Different shingles and
  random functions: near-duplicate drops agree in number, statistically, not document for document.
* clusters: lmkit drops a document that shares a band with an earlier one; datatrove joins the pairs into
  clusters (union-find) and keeps one per cluster: both keep one document per connected component.
* lmkit also cleans the text (NFC, control characters, whitespace), drops exact duplicates by hash before
  MinHash (datatrove's MinHash finds them as identical signatures) and writes a verified artifact (sha256 of
  every file).

A check of the filters, document by document (``--agreement-mb``, 2 MB): both sides' filters on each document,
counting those with the same verdict (kept by both, or dropped by both by the same rule).

Timing: the wall seconds of each run, a fresh subprocess (start and imports included; every stage: for
datatrove its four MinHash stages and the tokenization), sides alternating, best of ``--rounds``; MB/s is input
JSONL bytes / seconds. Also measured: the ceiling, one process encoding the cleaned documents that pass the
filters (what the pipelines tokenize, duplicates aside) with the same tokenizer and nothing else (``encode_batch``
of 512 texts with TOKENIZERS_PARALLELISM=false: one core; also ``encode_batch_fast``, which skips the offsets;
the two alternate twice and the faster pass of each counts),
against which lmkit is put as in benchmarks/preprocess.py (kept text MB/s / (N x ceiling)); lmkit's
``phase_seconds`` and its pass-one steps one by one on one core (``--profile-mb``); datatrove's own seconds per
step (from its stats.json, summed over tasks).

    python benchmarks/preprocess_peer.py                      # 50 MB, 2 rounds: about 15 minutes on 2 cores
    python benchmarks/preprocess_peer.py --mb 2 --rounds 1    # a quick look

Results go to stdout (a markdown table) and benchmarks/out/preprocess_peer.json.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "preprocess_peer"
PEER_VENV = OUT / "datatrove-venv"
# orjson: its JSONL reader and writer (the io extra); spacy: its English word tokenizer (the multilingual extra,
# whose other packages, tensorflow among them, are not needed here)
PEER_PACKAGES = ["datatrove[processing]==0.10.1", "orjson", "spacy"]
LMKIT = Path(sys.executable).parent / "lmkit"
WORKERS = 2
VOCAB = 8000
AIM = 1.5  # issue 35: lmkit >= 1.5x datatrove's MB/s
FILE_BYTES = 12_500_000
BANDS, ROWS, NGRAM = 9, 13, 5  # lmkit: lsh_params(0.8, 128) == (9, 13)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess import sentence_pool  # noqa: E402  (benchmarks/preprocess.py: the same real sentences)

# -- the corpus ------------------------------------------------------------------------------------------------
NAV = ["Home", "About us", "Contact", "Privacy policy", "Terms of use", "Sign in", "Subscribe to the newsletter",
       "Follow us on social media", "All rights reserved", "Back to top"]
TAGS = ["python", "code", "dev", "programming", "tips", "tutorial", "learn", "coding", "tech", "data", "ai"]


_TOKEN = re.compile(r"[^\W_]+(?:[.'][^\W_]+)*|\S")  # words and single punctuation marks, roughly as spaCy splits


def prose_pool() -> list[str]:
    """benchmarks/preprocess.py's sentences, less the code-heavy ones: those where under 75% of the words, each
    punctuation mark counted as a word, have a letter (993 of 2,288 are left)."""
    def alphabetic(sentence: str) -> float:
        tokens = _TOKEN.findall(sentence)
        return sum(any(c.isalpha() for c in token) for token in tokens) / len(tokens)
    return [s for s in sentence_pool() if alphabetic(s) >= 0.75]


def _normal(rng: random.Random, pool: list[str]) -> str:
    sentences = [rng.choice(pool) for _ in range(rng.randint(4, 24))]
    lines = rng.randint(2, min(6, len(sentences)))
    cuts = sorted(rng.sample(range(1, len(sentences)), lines - 1))
    return "\n".join(" ".join(sentences[a:b]) for a, b in zip([0, *cuts], [*cuts, len(sentences)]))


def _edited(rng: random.Random, text: str, every: int, words: list[str]) -> str:
    """``text`` with about one word in ``every`` replaced by another (a near duplicate)."""
    lines = []
    for line in text.split("\n"):
        tokens = line.split(" ")
        for i in range(len(tokens)):
            if rng.random() < 1 / every:
                tokens[i] = rng.choice(words)
        lines.append(" ".join(tokens))
    return "\n".join(lines)


def _low_quality(rng: random.Random, pool: list[str], kind: str) -> str:
    if kind == "stub":
        return rng.choice(["Loading", "404", "Untitled", "Continue", "Subscribe_to_our_newsletter_for_more",
                           "click-here-to-read-the-full-article"])
    if kind == "hashtags":
        words = " ".join(rng.choice(pool) for _ in range(2)).split()
        tags = [f"#{rng.choice(TAGS)}" for _ in range(len(words) // 2 + 4)]
        return " ".join(words + tags)
    if kind == "boilerplate":
        menu = rng.sample(NAV, 4)
        lines = [rng.choice(pool)] + menu * rng.randint(2, 4) + [rng.choice(pool)]
        return "\n".join(lines)
    # kind == "table": a caption and rows of numbers
    rows = [" ".join(f"{rng.uniform(0, 1000):.{rng.randint(0, 3)}f}" for _ in range(8))
            for _ in range(rng.randint(4, 12))]
    return "\n".join(["Table of measured values:", *rows])


def write_corpus(directory: Path, megabytes: float, seed: int) -> dict:
    """JSONL files of about FILE_BYTES each (at least 2); returns what was written, by kind."""
    marker = directory / ".complete.json"
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    pool = prose_pool()
    words = sorted({w for s in pool for w in s.split() if w.isalpha()})
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    files = max(2, round(target / FILE_BYTES))
    per_file = target / files
    kinds: dict[str, int] = {}
    recent: list[str] = []  # ordinary documents that near and exact duplicates copy
    written, n = 0, 0
    for index in range(files):
        with open(directory / f"part-{index:03d}.jsonl", "w", encoding="utf-8") as f:
            file_bytes = 0
            while file_bytes < per_file:
                draw = rng.random()
                if draw < 0.04 and recent:
                    kind, text = "near_light", _edited(rng, rng.choice(recent), 120, words)
                elif draw < 0.08 and recent:
                    kind, text = "near_heavy", _edited(rng, rng.choice(recent), 30, words)
                elif draw < 0.10 and recent:
                    kind, text = "exact", rng.choice(recent)
                elif draw < 0.20:
                    kind = rng.choice(["stub", "hashtags", "boilerplate", "table"])
                    text = _low_quality(rng, pool, kind)
                else:
                    kind, text = "ordinary", _normal(rng, pool)
                    recent.append(text)
                    if len(recent) > 5000:
                        recent.pop(rng.randrange(len(recent)))
                kinds[kind] = kinds.get(kind, 0) + 1
                line = json.dumps({"id": f"doc-{n}", "text": text}) + "\n"
                f.write(line)
                file_bytes += len(line.encode("utf-8"))
                n += 1
        written += file_bytes
    info = {"bytes": written, "documents": n, "files": files, "kinds": dict(sorted(kinds.items())), "seed": seed}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


def corpus_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("*.jsonl"))


def ordinary_sample(directory: Path, megabytes: float) -> list[str]:
    """Texts of the first ordinary-looking documents (several lines, no '#'), up to ``megabytes``."""
    texts, size = [], 0
    for path in corpus_files(directory):
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                if "\n" in text and "#" not in text and len(text) > 200:
                    texts.append(text)
                    size += len(text)
                    if size >= megabytes * 1e6:
                        return texts
    return texts


# -- the shared tokenizer and datatrove's environment ---------------------------------------------------------
def prepare_tokenizer(corpus: Path, work: Path) -> Path:
    """A byte-level BPE trained on the corpus, imported as an lmkit tokenizer artifact; returns its directory."""
    artifact = work / f"tokenizer-{corpus.name}"
    if (artifact / "manifest.json").exists():
        return artifact
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    source = work / f"tokenizer-hf-{corpus.name}"
    shutil.rmtree(source, ignore_errors=True)
    shutil.rmtree(artifact, ignore_errors=True)
    source.mkdir(parents=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(ordinary_sample(corpus, 4), trainer=trainer)
    tokenizer.save(str(source / "tokenizer.json"))
    (source / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 1024}) + "\n")
    subprocess.run([str(LMKIT), "--quiet", "import", str(source), "--out", str(artifact)], check=True,
                   stdout=subprocess.DEVNULL)
    return artifact


def prepare_peer() -> None:
    """datatrove in its own venv, installed once."""
    python = PEER_VENV / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import datatrove, orjson, spacy, tokenizers, xxhash"],
                           capture_output=True) if python.exists() else None
    if probe is None or probe.returncode != 0:
        print(f"installing {' '.join(PEER_PACKAGES)} into {PEER_VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)


# -- the two sides -------------------------------------------------------------------------------------------
_DATATROVE = """
import json, sys, time
settings = json.loads(sys.argv[1])
start = time.perf_counter()
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter, LambdaFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.word_tokenizers import WordTokenizer

def chars_ok(doc):  # lmkit's too_short and too_long
    return 20 <= len(doc.text) <= 1_000_000

class WhitespaceWords(WordTokenizer):  # lmkit's words: str.split (--peer-words whitespace)
    def word_tokenize(self, text):
        return text.split()
    def sent_tokenize(self, text):
        return [line for line in text.split("\\n") if line.strip()]
    def span_tokenize(self, text):
        spans, start = [], 0
        for line in text.split("\\n"):
            spans.append((start, start + len(line)))
            start += len(line) + 1
        return spans

language = WhitespaceWords() if settings["words"] == "whitespace" else "en"

work, workers, files = settings["work"], settings["workers"], settings["files"]
config = MinhashConfig(n_grams=settings["ngram"], num_buckets=settings["bands"], hashes_per_bucket=settings["rows"])
stages = {
    "1 read, filter, write, signatures": LocalPipelineExecutor(pipeline=[
        JsonlReader(settings["corpus"], glob_pattern="*.jsonl"),
        LambdaFilter(chars_ok),
        GopherQualityFilter(min_doc_words=3, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
                            max_symbol_word_ratio=0.1, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                            max_non_alpha_words_ratio=0.6, min_stop_words=None, language=language),
        GopherRepetitionFilter(dup_line_frac=0.3, dup_para_frac=None, dup_line_char_frac=None,
                               dup_para_char_frac=None, top_n_grams=(), dup_n_grams=(), language=language),
        JsonlWriter(f"{work}/filtered", compression=None),
        MinhashDedupSignature(output_folder=f"{work}/signatures", config=config, language=language),
    ], tasks=files, workers=workers, logging_dir=f"{work}/logs/1"),
    "2 buckets": LocalPipelineExecutor(pipeline=[
        MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets", config=config),
    ], tasks=config.num_buckets, workers=workers, logging_dir=f"{work}/logs/2"),
    "3 clusters": LocalPipelineExecutor(pipeline=[
        MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=config),
    ], tasks=1, workers=1, logging_dir=f"{work}/logs/3"),
    "4 dedup filter, tokenize": LocalPipelineExecutor(pipeline=[
        JsonlReader(f"{work}/filtered", glob_pattern="*.jsonl"),
        MinhashDedupFilter(input_folder=f"{work}/remove_ids"),
        DocumentTokenizer(output_folder=f"{work}/tokens", tokenizer_name_or_path=settings["tokenizer"],
                          eos_token=None, seed=0),
    ], tasks=files, workers=workers, logging_dir=f"{work}/logs/4"),
}
seconds = {"imports": time.perf_counter() - start}
for name, executor in stages.items():
    began = time.perf_counter()
    executor.run()
    seconds[name] = time.perf_counter() - began
stats = {}
for stage in range(1, 5):
    with open(f"{work}/logs/{stage}/stats.json") as f:
        stats[stage] = json.load(f)
print(json.dumps({"stage_seconds": seconds, "stats": stats}))
"""

_CEILING = """
import json, os, sys, time
from tokenizers import Tokenizer
from lmkit.data.cleaning import clean_text
from lmkit.data.filters import FILTERS, FilterThresholds, first_failing_filter
tokenizer_json, files = sys.argv[1], sys.argv[2:]
texts, thresholds = [], FilterThresholds()
for path in files:  # the cleaned documents that pass the filters: what the pipelines tokenize (less duplicates)
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = clean_text(json.loads(line)["text"])
            if text and first_failing_filter(text, tuple(FILTERS), thresholds) is None:
                texts.append(text)
tokenizer = Tokenizer.from_file(tokenizer_json)
n_bytes = sum(len(t.encode()) for t in texts)
result = {"bytes": n_bytes, "documents": len(texts)}
for round_ in range(2):  # the two calls alternate, the faster round of each counts: one pass each read 20% apart
    for name in ("encode_batch", "encode_batch_fast"):  # the call both pipelines make; the same without offsets
        encode = getattr(tokenizer, name)
        start, cpu, tokens = time.perf_counter(), time.process_time(), 0
        for i in range(0, len(texts), 512):
            tokens += sum(len(e.ids) for e in encode(texts[i:i + 512], add_special_tokens=False))
        run = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu, "tokens": tokens}
        if name not in result or run["seconds"] < result[name]["seconds"]:
            result[name] = run
print(json.dumps(result))
"""


def run_lmkit(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [str(LMKIT), "--quiet", "preprocess", *corpus_files(corpus), "--out", str(out), "--workers",
               str(workers), "--tokenizer", str(tokenizer), "--val-fraction", "0", "--force"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "stats": stats}


def run_datatrove(corpus: Path, tokenizer: Path, work: Path, workers: int, files: int, words: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    settings = {"corpus": str(corpus), "work": str(work), "workers": workers, "files": files,
                "tokenizer": str(tokenizer / "tokenizer.json"), "ngram": NGRAM, "bands": BANDS, "rows": ROWS,
                "words": words}
    start = time.perf_counter()
    proc = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c", _DATATROVE, json.dumps(settings)],
                          capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"datatrove failed:\n{proc.stderr[-5000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": seconds, **result}


_PROFILE = """
import collections, json, sys, time
from lmkit.data import sources
from lmkit.data.cleaning import clean_text
from lmkit.data.dedup import NearDeduper, text_digest
from lmkit.data.filters import FilterThresholds, first_failing_filter, FILTERS
from lmkit.data.preprocess_steps import BATCH_DOCS
from lmkit.tokenizer import load
tokenizer_dir, limit, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
seconds = collections.Counter()
start = time.perf_counter()
counts, texts = collections.Counter(), []
for path in files:
    for document in sources.iter_documents(path, sources.ReadOptions(), counts):
        texts.append(document.text)
        if counts["input_bytes"] >= limit:
            break
    if counts["input_bytes"] >= limit:
        break
seconds["read JSONL"] = time.perf_counter() - start
def timed(name, function, items):
    began = time.perf_counter()
    result = [function(item) for item in items]
    seconds[name] += time.perf_counter() - began
    return result
cleaned = timed("clean (NFC, control characters, whitespace)", clean_text, texts)
names, thresholds = tuple(FILTERS), FilterThresholds()
reasons = timed("quality filters", lambda t: first_failing_filter(t, names, thresholds), cleaned)
kept = [t for t, r in zip(cleaned, reasons) if r is None]
timed("exact-dedup digest", text_digest, kept)
near = NearDeduper(0.8)
keys = [k for batch in timed("MinHash band keys", near.keys,
                             [kept[i:i + BATCH_DOCS] for i in range(0, len(kept), BATCH_DOCS)]) for k in batch]
timed("LSH lookup", near.is_duplicate, keys)
tokenizer = load(tokenizer_dir)
began = time.perf_counter()
for i in range(0, len(kept), BATCH_DOCS):
    tokenizer.encode_batch(kept[i:i + BATCH_DOCS])
seconds["tokenize (encode_batch)"] = time.perf_counter() - began
print(json.dumps({"input_bytes": counts["input_bytes"], "documents": len(texts), "kept": len(kept),
                  "seconds": dict(seconds)}))
"""


_PEER_FILTERS = """
import json, sys
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
quality = GopherQualityFilter(min_doc_words=3, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
                              max_symbol_word_ratio=0.1, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                              max_non_alpha_words_ratio=0.6, min_stop_words=None)
repetition = GopherRepetitionFilter(dup_line_frac=0.3, dup_para_frac=None, dup_line_char_frac=None,
                                    dup_para_char_frac=None, top_n_grams=(), dup_n_grams=())
reasons = []
for text in json.load(sys.stdin):
    reason = None if 20 <= len(text) <= 1_000_000 else "too_short_or_long"
    for rule in (quality, repetition):
        if reason is None:
            result = rule.filter(Document(text=text, id="0"))
            reason = None if result is True else result[1]
    reasons.append(reason)
print(json.dumps(reasons))
"""
# datatrove's reason -> lmkit's filter of the same rule
_SAME_RULE = {"too_short_or_long": ("too_short", "too_long"), "gopher_short_doc": ("few_words",),
              "gopher_too_many_hashes": ("symbols",), "gopher_too_many_ellipsis": ("symbols",),
              "dup_line_frac": ("repeated_lines",), "gopher_below_alpha_threshold": ("non_alpha",)}


def filter_agreement(corpus: Path, megabytes: float) -> dict:
    """Both sides' quality filters on each of the first ``megabytes`` of documents: how many get the same verdict
    (kept by both, or dropped by both by the same rule), and the texts of some that do not."""
    from lmkit.data.cleaning import clean_text
    from lmkit.data.filters import FILTERS, FilterThresholds, first_failing_filter

    texts, size = [], 0
    for path in corpus_files(corpus):
        with open(path, encoding="utf-8") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
                size += len(line)
                if size >= megabytes * 1e6:
                    break
        if size >= megabytes * 1e6:
            break
    proc = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c", _PEER_FILTERS], input=json.dumps(texts),
                          capture_output=True, text=True, check=True)
    theirs = json.loads(proc.stdout)
    thresholds, table, differ = FilterThresholds(), {}, []
    for text, their in zip(texts, theirs):
        cleaned = clean_text(text)
        our = first_failing_filter(cleaned, tuple(FILTERS), thresholds) if cleaned else "empty"
        key = f"{our or 'kept'} / {their or 'kept'}"
        table[key] = table.get(key, 0) + 1
        if (our is None) != (their is None) or (their is not None and our not in _SAME_RULE.get(their, ())):
            differ.append({"lmkit": our, "datatrove": their, "text": text[:120]})
    same = len(texts) - len(differ)
    return {"documents": len(texts), "same_verdict": same, "verdicts": dict(sorted(table.items())),
            "different": differ[:10], "different_count": len(differ)}


def _one_core(script: str, *argv: str) -> dict:
    """``script`` in a fresh interpreter importing this checkout's lmkit, tokenizers on one thread; its JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout)


def run_ceiling(corpus: Path, tokenizer: Path) -> dict:
    return _one_core(_CEILING, str(tokenizer / "tokenizer.json"), *corpus_files(corpus))


def run_profile(corpus: Path, tokenizer: Path, megabytes: float) -> dict:
    """One process, lmkit's pass-one steps one after the other over the first ``megabytes`` of the corpus, then
    tokenizing what they keep (TOKENIZERS_PARALLELISM=false: one core): single-core seconds per step."""
    return _one_core(_PROFILE, str(tokenizer), str(int(megabytes * 1e6)), *corpus_files(corpus))


# -- summaries -------------------------------------------------------------------------------------------------
def _scalar(value):
    return value["total"] if isinstance(value, dict) else value


def peer_summary(run: dict) -> dict:
    """Drop counts by stage and seconds by step (summed over tasks) from datatrove's stats.json files."""
    steps, drops, tokens = [], {}, 0
    for stage, entries in run["stats"].items():
        inclusive = 0.0  # a MinHash stage-1 step times its whole loop, upstream steps included: subtract them
        for entry in entries:
            kind, _, name = re.sub(r"[^\w\s:]", "", entry["name"]).partition(":")  # "🔻 - FILTER: 🥇 Gopher Quality"
            name = name.strip()
            total = entry["time_stats"]["total"]
            own = total - inclusive if "MinHash stage 1" in name else total
            inclusive += own
            steps.append({"stage": int(stage), "step": f"{name} ({kind.strip().lower()})", "seconds": round(own, 2)})
            stats = {k: _scalar(v) for k, v in entry["stats"].items()}
            for key, value in stats.items():
                if key.startswith("dropped_"):
                    drops[f"{name}: {key[len('dropped_'):]}"] = value
            if "FILTER" in kind and "dropped" in stats and not any(k.startswith("dropped_") for k in stats):
                drops[f"{name}: dropped"] = stats["dropped"]
            if "MinHash stage 4" in name:
                drops["MinHash stage 4: near duplicates"] = stats.get("dropped", 0)
            if "TOKENIZER" in kind:
                tokens = stats.get("tokens", 0)
    kept = next((_scalar(e["stats"].get("forwarded", 0)) for e in run["stats"]["4"] if "MinHash stage 4" in e["name"]),
                None)
    return {"steps": steps, "dropped": drops, "documents_kept": kept, "tokens": tokens}


def best(runs: list[dict]) -> dict:
    return min(runs, key=lambda r: r["seconds"])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


PEER_WORDS = {"spacy": "datatrove", "whitespace": "datatrove, whitespace words"}


def side_by_side(corpus: Path, tokenizer: Path, input_bytes: int, workers: int, rounds: int) -> None:
    """lmkit's run and the ceiling right after it, ``rounds`` times: the ratio of each round, both sides measured
    within a minute of each other. Results: stdout and benchmarks/out/preprocess_ceiling_rounds.json."""
    rows = []
    for round_ in range(rounds):
        run = run_lmkit(corpus, tokenizer, WORK / "run-lmkit", workers)
        ceiling = run_ceiling(corpus, tokenizer)
        ceiling_mb_s = ceiling["bytes"] / 1e6 / ceiling["encode_batch"]["seconds"]
        kept_mb = run["stats"]["bytes"] / 1e6
        rows.append({"round": round_ + 1, "lmkit_s": round(run["seconds"], 2),
                     "phase_seconds": run["stats"].get("phase_seconds"), "kept_text_mb": round(kept_mb, 3),
                     "ceiling_mb_s": round(ceiling_mb_s, 3),
                     "kept_ratio": round(kept_mb / run["seconds"] / (workers * ceiling_mb_s), 3),
                     "input_ratio": round(input_bytes / 1e6 / run["seconds"] / (workers * ceiling_mb_s), 3)})
        print(json.dumps(rows[-1]), flush=True)
    (OUT / "preprocess_ceiling_rounds.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50, help="corpus size in MB (default 50)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each side, alternating; the best counts")
    parser.add_argument("--workers", type=int, default=WORKERS, help="worker processes on each side (default 2)")
    parser.add_argument("--peer-words", default="spacy,whitespace",
                        help="datatrove's word splitting, one run per round each: spacy (its English default), "
                             "whitespace (str.split, lmkit's)")
    parser.add_argument("--profile-mb", type=float, default=5, help="MB of the corpus for lmkit's step profile")
    parser.add_argument("--agreement-mb", type=float, default=2,
                        help="MB of the corpus on which both sides' filters are compared document by document")
    parser.add_argument("--ceiling-rounds", type=int, default=0,
                        help="only lmkit against the ceiling: this many rounds of an lmkit run followed at once by "
                             "the ceiling, each round's ratio (this machine's speed drifts over minutes)")
    args = parser.parse_args()
    variants = [w.strip() for w in args.peer_words.split(",") if w.strip()]
    if not variants or any(w not in PEER_WORDS for w in variants):
        parser.error(f"--peer-words: a comma-separated list of {', '.join(PEER_WORDS)}")

    WORK.mkdir(parents=True, exist_ok=True)
    corpus = WORK / f"corpus-{args.mb:g}mb"
    info = write_corpus(corpus, args.mb, seed=1)
    tokenizer = prepare_tokenizer(corpus, WORK)
    if args.ceiling_rounds:
        side_by_side(corpus, tokenizer, info["bytes"], args.workers, args.ceiling_rounds)
        return
    prepare_peer()
    mb = info["bytes"] / 1e6
    print(f"corpus: {mb:.1f} MB, {info['documents']:,} documents in {info['files']} JSONL files ({corpus}); "
          f"made on purpose: {info['kinds']}", file=sys.stderr)

    lmkit_runs: list[dict] = []
    peer_runs: dict[str, list[dict]] = {w: [] for w in variants}
    for round_ in range(args.rounds):
        lmkit_runs.append(run_lmkit(corpus, tokenizer, WORK / "run-lmkit", args.workers))
        print(f"round {round_ + 1}: lmkit {lmkit_runs[-1]['seconds']:.1f} s", file=sys.stderr)
        for words in variants:
            peer_runs[words].append(run_datatrove(corpus, tokenizer, WORK / "run-datatrove", args.workers,
                                                  info["files"], words))
            print(f"round {round_ + 1}: {PEER_WORDS[words]} {peer_runs[words][-1]['seconds']:.1f} s",
                  file=sys.stderr)
    ceiling = run_ceiling(corpus, tokenizer)
    profile = run_profile(corpus, tokenizer, min(args.profile_mb, mb))
    agreement = filter_agreement(corpus, min(args.agreement_mb, mb))

    ours = best(lmkit_runs)
    ours_mb_s = mb / ours["seconds"]
    ceiling_mb_s = ceiling["bytes"] / 1e6 / ceiling["encode_batch"]["seconds"]
    fast_mb_s = ceiling["bytes"] / 1e6 / ceiling["encode_batch_fast"]["seconds"]
    stats = ours["stats"]
    phases = stats["phase_seconds"]
    tokenizing = stats["bytes"] / 1e6 / phases["tokenize_write"] / (args.workers * ceiling_mb_s)
    peers = {}
    for words, runs in peer_runs.items():
        theirs = best(runs)
        summary = peer_summary(theirs)
        theirs_mb_s = mb / theirs["seconds"]
        peers[words] = {
            "name": PEER_WORDS[words], "words": words,
            "seconds": [round(r["seconds"], 2) for r in runs], "mb_per_s": [round(mb / r["seconds"], 3) for r in runs],
            "best_mb_per_s": round(theirs_mb_s, 3), "ratio": round(ours_mb_s / theirs_mb_s, 3),
            "input_ratio_to_ceiling": round(theirs_mb_s / (args.workers * ceiling_mb_s), 3),
            "documents_kept": summary["documents_kept"], "dropped": summary["dropped"], "tokens": summary["tokens"],
            "stage_seconds": {k: round(v, 2) for k, v in theirs["stage_seconds"].items()},
            "step_seconds": summary["steps"]}
    headline = peers[variants[0]]["ratio"]
    results = {
        "corpus": {**info, "mb": round(mb, 3), "path": str(corpus)}, "workers": args.workers,
        "cores": os.cpu_count(), "cpu": _cpu_model(), "rounds": args.rounds,
        "tokenizer": {"path": str(tokenizer), "vocab_size": stats["vocab_size"]},
        "lmkit": {"name": "lmkit", "seconds": [round(r["seconds"], 2) for r in lmkit_runs],
                  "mb_per_s": [round(mb / r["seconds"], 3) for r in lmkit_runs],
                  "best_mb_per_s": round(ours_mb_s, 3), "documents_in": stats["documents_in"],
                  "documents_kept": stats["documents_kept"], "dropped": stats["dropped"], "tokens": stats["tokens"],
                  "kept_text_mb": round(stats["bytes"] / 1e6, 3), "stage_seconds": stats["seconds"],
                  "phase_seconds": phases},
        "datatrove": peers,
        "ratio": headline, "ratio_against": variants[0], "aim": AIM, "meets_aim": headline >= AIM,
        "ceiling": {"text_mb_per_s": round(ceiling_mb_s, 3), "documents": ceiling["documents"],
                    "tokens_per_s": round(ceiling["encode_batch"]["tokens"] / ceiling["encode_batch"]["seconds"]),
                    "cpu_seconds_per_second": round(ceiling["encode_batch"]["cpu_seconds"]
                                                    / ceiling["encode_batch"]["seconds"], 2),
                    "encode_batch_fast_text_mb_per_s": round(fast_mb_s, 3)},
        "lmkit_ratio_to_ceiling": round(stats["bytes"] / 1e6 / ours["seconds"] / (args.workers * ceiling_mb_s), 3),
        "lmkit_input_ratio_to_ceiling": round(ours_mb_s / (args.workers * ceiling_mb_s), 3),
        "lmkit_tokenizing_pass_ratio": round(tokenizing, 3),
        "lmkit_ratio_to_fast_ceiling": round(stats["bytes"] / 1e6 / ours["seconds"] / (args.workers * fast_mb_s), 3),
        "lmkit_profile": profile,
        "filter_agreement": agreement,
    }
    (OUT / "preprocess_peer.json").write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)


def _drop_rows(ours: dict, peers: list[dict]) -> list[tuple[str, int, list]]:
    def peer(side: dict, *keys: str) -> int:
        return sum(side["dropped"].get(key, 0) for key in keys)
    rules = [
        ("too short (< 20 chars)", "too_short", ("Lambda: dropped",)),
        ("too long (> 1M chars)", "too_long", ()),
        ("few words (< 3)", "few_words", ("Gopher Quality: gopher_short_doc",)),
        ("symbols (# and ellipsis per word > 0.1)", "symbols",
         ("Gopher Quality: gopher_too_many_hashes", "Gopher Quality: gopher_too_many_ellipsis")),
        ("repeated lines (> 30%)", "repeated_lines", ("Gopher Repetition: dup_line_frac",)),
        ("non-alpha words (< 60% with a letter)", "non_alpha", ("Gopher Quality: gopher_below_alpha_threshold",)),
    ]
    rows = [(name, ours["dropped"].get(key, 0), [peer(side, *keys) for side in peers]) for name, key, keys in rules]
    rows.append(("exact duplicates", ours["dropped"].get("exact_duplicate", 0), ["(in MinHash)"] * len(peers)))
    rows.append(("near duplicates (MinHash 9 x 13)", ours["dropped"].get("near_duplicate", 0),
                 [peer(side, "MinHash stage 4: near duplicates") for side in peers]))
    return rows


def print_report(r: dict) -> None:
    ours, peers, w = r["lmkit"], list(r["datatrove"].values()), r["workers"]
    corpus = r["corpus"]
    print(f"## lmkit preprocess vs datatrove: {corpus['mb']:.1f} MB JSONL, {corpus['documents']:,} documents, "
          f"{w} workers, {r['cores']} cores ({r['cpu']})\n")
    rounds = " | ".join(f"round {i + 1}" for i in range(r["rounds"]))
    print(f"| | {rounds} | best MB/s | lmkit / this | documents kept | tokens |")
    print("|---|" + "---|" * r["rounds"] + "---|---|---|---|")
    for side in [ours, *peers]:
        rounds = " | ".join(f"{s:.1f} s, {m:.2f} MB/s" for s, m in zip(side["seconds"], side["mb_per_s"]))
        ratio = f"{side['ratio']:.2f}x" if "ratio" in side else ""
        print(f"| {side['name']} | {rounds} | {side['best_mb_per_s']:.2f} | {ratio} | {side['documents_kept']:,} "
              f"| {side['tokens']:,} |")
    verdict = "met" if r["meets_aim"] else "NOT met"
    print(f"\nratio lmkit / {r['datatrove'][r['ratio_against']]['name']}: **{r['ratio']:.2f}x** (aim {r['aim']}x: "
          f"{verdict})\n")
    print("| documents dropped by | lmkit | " + " | ".join(side["name"] for side in peers) + " |")
    print("|---|---|" + "---|" * len(peers))
    for name, a, bs in _drop_rows(ours, peers):
        print(f"| {name} | {a:,} | " + " | ".join(b if isinstance(b, str) else f"{b:,}" for b in bs) + " |")
    print(f"| **kept** | {ours['documents_kept']:,} | " + " | ".join(f"{side['documents_kept']:,}" for side in peers)
          + " |")
    a = r["filter_agreement"]
    print(f"\nfilters document by document (datatrove with spaCy words), first {a['documents']:,} documents: the same "
          f"verdict (kept by both, or dropped by the same rule) for {a['same_verdict']:,}; verdicts "
          f"(lmkit / datatrove): {a['verdicts']}")
    for text in sorted({case["text"] for case in a["different"]})[:5]:
        print(f"  differs: {text!r}")
    kinds = ", ".join(f"{k} {v:,}" for k, v in corpus["kinds"].items())
    print(f"\nmade on purpose (of {corpus['documents']:,}): {kinds}")
    c = r["ceiling"]
    print(f"\nceiling (one process, encode_batch, tokenizers single-threaded): {c['text_mb_per_s']:.2f} MB/s of text "
          f"({c['cpu_seconds_per_second']:.2f} CPU s per s); lmkit kept text / ({w} x ceiling) = "
          f"{r['lmkit_ratio_to_ceiling']:.3f}, input / ({w} x ceiling) = {r['lmkit_input_ratio_to_ceiling']:.3f} ("
          + ", ".join(f"{side['name']} {side['input_ratio_to_ceiling']:.3f}" for side in peers)
          + f"); lmkit's tokenizing pass alone {r['lmkit_tokenizing_pass_ratio']:.3f}. The same tokenizer's "
          f"encode_batch_fast (no offsets) encodes {c['encode_batch_fast_text_mb_per_s']:.2f} MB/s on one core: lmkit "
          f"kept text / ({w} x that) = {r['lmkit_ratio_to_fast_ceiling']:.3f}\n")
    print("| lmkit phase (best run) | seconds |")
    print("|---|---|")
    phases = ours["phase_seconds"]
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.2f} |")
    print(f"| rest (start, imports, hashing inputs, sealing the artifact) | "
          f"{min(ours['seconds']) - sum(phases.values()):.2f} |")
    p = r["lmkit_profile"]
    print(f"\nlmkit's steps one after the other, one core, first {p['input_bytes'] / 1e6:.1f} MB "
          f"({p['documents']:,} documents, {p['kept']:,} tokenized):\n")
    print("| step | seconds | input MB/s |")
    print("|---|---|---|")
    for name, seconds in p["seconds"].items():
        print(f"| {name} | {seconds:.2f} | {p['input_bytes'] / 1e6 / max(seconds, 1e-9):.1f} |")
    for side in peers:
        print(f"\n| {side['name']}: step (best run; seconds summed over tasks) | seconds |")
        print("|---|---|")
        for step in side["step_seconds"]:
            print(f"| {step['stage']}: {step['step']} | {step['seconds']:.2f} |")
        walls = ", ".join(f"{k} {v:.1f}" for k, v in side["stage_seconds"].items())
        print(f"| wall seconds by executor | {walls} |")


if __name__ == "__main__":
    main()
