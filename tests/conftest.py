"""Shared fixtures: small real corpora and a dataset built once per test session."""

import json
import os
import pydoc_data.topics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def paragraphs(limit: int = 300) -> list[str]:
    """Unique single-line paragraphs of Python's bundled docs that pass the default filters."""
    found = dict.fromkeys(
        " ".join(p.split()) for text in pydoc_data.topics.topics.values() for p in text.split("\n\n")
        if len(p.split()) >= 8 and "..." not in p and "#" not in p and sum(c.isalpha() for c in p) > len(p) / 2)
    return list(found)[:limit]


@pytest.fixture(scope="session", autouse=True)
def lmkit_cache(tmp_path_factory):
    """lmkit's cache (the measured peak FLOP/s for MFU) in the session's temporary directory, not the home of
    whoever runs the tests; subprocesses inherit it."""
    os.environ["LMKIT_CACHE"] = str(tmp_path_factory.mktemp("lmkit-cache"))
    yield
    os.environ.pop("LMKIT_CACHE", None)


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus")
    (directory / "docs.txt").write_text("\n\n".join(paragraphs()) + "\n")
    return directory


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, text_corpus) -> Path:
    """A dataset artifact made by the real CLI in a subprocess (read-only for tests: copy to change)."""
    out = tmp_path_factory.mktemp("datasets") / "data"
    run_lmkit("preprocess", str(text_corpus), "--out", str(out), "--vocab-size", "400", "--workers", "1",
              check=True)
    return out


def run_lmkit(*args: str, check: bool = False, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`python -m lmkit ARGS` in a subprocess, as a user or Make runs it (no terminal)."""
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "lmkit", *args], capture_output=True, text=True,
                            env=full_env, cwd=kwargs.pop("cwd", None), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"lmkit {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def train_tiny(dataset: Path, out: Path, **overrides):
    """A 2-step gpt-tiny run into ``out`` whose only checkpoint is final/ (fast: a few seconds)."""
    from lmkit.config import resolve
    from lmkit.stages import pretrain
    from lmkit.stages.pretrain_config import PretrainConfig

    values = {"dataset": str(dataset), "out": str(out), "seq_len": 32, "micro_batch": 4, "max_steps": 2,
              "eval_every": 0, "checkpoint_every": 0, "precision": "fp32", **overrides}
    return pretrain.run(resolve(PretrainConfig, {}, values))


# -- tiny language models (read-only for tests: copy one to change it) ----------------------------------

@pytest.fixture(scope="session")
def gpt(dataset, tmp_path_factory) -> Path:
    return train_tiny(dataset, tmp_path_factory.mktemp("gpt") / "run").path


@pytest.fixture(scope="session")
def bert(dataset, tmp_path_factory) -> Path:
    return train_tiny(dataset, tmp_path_factory.mktemp("bert") / "run", model="bert-tiny").path


@pytest.fixture(scope="session")
def lstm(dataset, tmp_path_factory) -> Path:
    return train_tiny(dataset, tmp_path_factory.mktemp("lstm") / "run", model="lstm-small", d_model=32, n_layer=2).path


# -- finetuning inputs (tests/stages/test_finetune.py, tests/cli/test_finetune.py) ---------------------

@pytest.fixture(scope="session")
def bases(dataset, tmp_path_factory):
    """Tiny pretrained checkpoints sharing the dataset's tokenizer: gpt, bert, lstm."""
    root = tmp_path_factory.mktemp("bases")
    return {name: train_tiny(dataset, root / name, model=preset, max_steps=4).path
            for name, preset in (("gpt", "gpt-tiny"), ("bert", "bert-tiny"), ("lstm", "lstm-small"))}


def labeled_records(n=160):
    """Two easily told classes: the same paragraphs in upper and in lower case."""
    records = []
    for i, text in enumerate(paragraphs(n // 2)):
        records.append({"text": text.upper()[:200], "label": "upper"})
        records.append({"text": text.lower()[:200] + f" {i}", "label": "lower"})
    return records


def preprocess_labeled(dataset, out, records, *extra):
    source = out.with_suffix(".jsonl")
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    run_lmkit("preprocess", str(source), "--out", str(out), "--label-field", "label", "--tokenizer",
              str(dataset / "tokenizer"), "--no-near-dedup", "--filters", "too_short", "--workers", "1", *extra,
              check=True)
    return out


@pytest.fixture(scope="session")
def labeled(dataset, tmp_path_factory):
    """A labeled dataset (upper/lower) without a validation split: finetune makes one."""
    return preprocess_labeled(dataset, tmp_path_factory.mktemp("labeled") / "data", labeled_records(),
                               "--val-fraction", "0")


def pair_records(n=120):
    """Text pairs: a paragraph's first half with its own second half ("same") or another's ("other"); each
    second half occurs twice, once with each label."""
    halves = [(" ".join(words[:len(words) // 2]), " ".join(words[len(words) // 2:]))
              for words in (text.split() for text in paragraphs(n))]
    return [{"text": first, "pair": {"text": halves[i if i % 2 == 0 else (i + 1) % n][1]},
             "label": "same" if i % 2 == 0 else "other"} for i, (first, _) in enumerate(halves)]


@pytest.fixture(scope="session")
def pair_dataset(dataset, tmp_path_factory):
    """A labeled pair dataset (same/other, --text-pair-field pair.text) with a validation split."""
    return preprocess_labeled(dataset, tmp_path_factory.mktemp("pairs") / "data", pair_records(),
                              "--text-pair-field", "pair.text", "--val-fraction", "0.2")


@pytest.fixture(scope="session")
def pair_classifier(bases, pair_dataset, tmp_path_factory):
    """A BERT pair classifier finetuned for 2 steps on pair_dataset."""
    from lmkit.config import resolve
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    values = {"base": str(bases["bert"]), "data": str(pair_dataset), "out": str(tmp_path_factory.mktemp("pair-clf")),
              "max_steps": 2, "micro_batch": 4, "seq_len": 48, "eval_every": 0, "precision": "fp32"}
    return finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path


@pytest.fixture(scope="session")
def instructions(tmp_path_factory):
    path = tmp_path_factory.mktemp("sft") / "pairs.jsonl"
    texts = paragraphs(60)
    path.write_text("".join(json.dumps({"prompt": f"First word of: {t[:30]}", "response": t.split()[0]}) + "\n"
                            for t in texts))
    return path


def qa_records(n=80):
    """Question-answering records (SQuAD's layout) on paragraphs of the docs, long enough to need several windows
    at --seq-len 48: "What is the code?" answered by the word after "The code is", placed at a varying depth."""
    records = []
    texts = paragraphs(n + 1)
    for i, text in enumerate(texts[:n]):
        words = (text + " " + texts[i + 1]).split()[:60]
        code = f"k{i * 37 % 1000:03d}"
        at = (i * 7) % len(words)
        context = " ".join(words[:at] + ["The", "code", "is", code + "."] + words[at:])
        records.append({"id": f"q{i}", "question": "What is the code?", "context": context,
                        "answers": {"text": [code], "answer_start": [context.index(f"code is {code}") + 8]}})
    return records


@pytest.fixture(scope="session")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_records()))
    return path


@pytest.fixture(scope="session")
def qa_checkpoint(bases, qa_file, tmp_path_factory):
    """A BERT span (qa) model finetuned for 4 steps on qa_file."""
    from lmkit.config import resolve
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    values = {"base": str(bases["bert"]), "data": str(qa_file), "out": str(tmp_path_factory.mktemp("qa-run")),
              "max_steps": 4, "micro_batch": 8, "seq_len": 48, "eval_every": 0, "precision": "fp32"}
    return finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path


def block_imports(monkeypatch, *packages: str) -> None:
    """Make ``import PACKAGE`` (and its submodules) fail for the rest of the test, as if it were not installed."""
    import builtins

    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if any(name == package or name.startswith(package + ".") for package in packages):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", blocked)
