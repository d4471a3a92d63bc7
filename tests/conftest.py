"""Shared fixtures: small real corpora and a dataset built once per test session."""

import contextlib
import dataclasses
import json
import os
import pydoc_data.topics
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

from lmkit.devices import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
# Nothing is downloaded in the tests: Hugging Face's libraries read these when they are imported, so they are set
# for the whole session (a command run in-process, invoke_lmkit, cannot set them for itself as a subprocess can).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# pytest -n N: N workers share the cores, and torch would take them all in each. A worker's share of the CPUs this
# process may use (affinity, cgroup quota: lmkit.devices.usable_cpus; 0 without workers: torch's and lmkit's own
# choice).
WORKER_THREADS = max(1, usable_cpus()[0] // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) \
    if os.environ.get("PYTEST_XDIST_WORKER") else 0
if WORKER_THREADS:  # lmkit's runs take OMP_NUM_THREADS when no --threads is given, as the processes they start do
    os.environ["OMP_NUM_THREADS"] = str(WORKER_THREADS)
    torch.set_num_threads(WORKER_THREADS)


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
    """A dataset artifact made by the real CLI, in-process (read-only for tests: copy to change)."""
    out = tmp_path_factory.mktemp("datasets") / "data"
    invoke_lmkit("preprocess", str(text_corpus), "--out", str(out), "--vocab-size", "400", "--workers", "1",
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


@dataclasses.dataclass
class Invoked:
    """What `invoke_lmkit` returns: the fields of run_lmkit's CompletedProcess that tests read."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def invoke_lmkit(*args: str, check: bool = False, env: dict | None = None, input: str | None = None,
                 cwd: str | Path | None = None) -> Invoked:
    """`lmkit ARGS` in this process, through typer's CliRunner, returning what `run_lmkit` would: the exit code,
    stdout and stderr (a bug's traceback included, as Python would print it, with exit code 1). For what needs
    no process of its own (refusals, argument errors, output); signals, what a fresh interpreter imports, torchrun
    and servers keep `run_lmkit`."""
    from typer.testing import CliRunner

    from lmkit.cli import app

    threads = torch.get_num_threads()
    try:
        with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
            result = CliRunner().invoke(app, list(args), input=input, env={"NO_COLOR": "1", **(env or {})})
    finally:  # what a process of its own would not leave behind: --threads N sets torch's for the whole process
        torch.set_num_threads(threads)
    returncode, stderr = result.exit_code, result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
        returncode = 1
    invoked = Invoked(list(args), returncode, result.stdout, stderr)
    if check and returncode != 0:
        raise AssertionError(f"lmkit {' '.join(args)} exited {returncode}:\n{invoked.stdout}\n{invoked.stderr}")
    return invoked


def free_port() -> int:
    """A TCP port nothing listens on now (for torchrun's rendezvous, a server under test)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sigterm_at_call(real, call: int):
    """``real``, sending this process SIGTERM during its ``call``-th call (a preemption)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    return wrapper


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
    invoke_lmkit("preprocess", str(source), "--out", str(out), "--label-field", "label", "--tokenizer",
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


# -- chat (tests/tasks/test_chat.py, tests/serving/test_chat_server.py, tests/cli/test_chat.py) -------------------

CHAT_WORDS = ("red", "green", "blue", "amber", "violet", "black", "white", "grey")


def chat_records(n=96, seed=0):
    """Two-exchange conversations whose last reply depends on the first turn: the user names a colour, the
    assistant acknowledges, and then repeats the colour when asked. Every fourth has a system prompt."""
    import random

    rng = random.Random(seed)
    records = []
    for i in range(n):
        word = rng.choice(CHAT_WORDS)
        messages = ([{"role": "system", "content": "Answer in one word."}] if i % 4 == 0 else []) + [
            {"role": "user", "content": f"My colour is {word}."}, {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Which colour?"}, {"role": "assistant", "content": word}]
        records.append({"messages": messages})
    return records


@pytest.fixture(scope="session")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_records()))
    return path


@pytest.fixture(scope="session")
def chat_model(gpt, chat_file, tmp_path_factory):
    """The tiny GPT finetuned on chat_file for 60 steps (lmkit's ChatML, its two tokens added): it has learned to
    end its turns (read-only for tests)."""
    from lmkit.config import resolve
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    values = {"base": str(gpt), "data": str(chat_file), "out": str(tmp_path_factory.mktemp("chat-run") / "run"),
              "max_steps": 60, "micro_batch": 8, "seq_len": 128, "lr": 3e-3, "eval_every": 0, "precision": "fp32",
              "system_prompt": "Be brief."}
    return finetune.run(resolve(FinetuneConfig, {}, values)).checkpoint.path
