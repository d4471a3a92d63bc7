"""Checkpoints and data for evaluation tests: real tiny models, written as the training stages write them.

Classifier and SFT checkpoints are written directly (write_checkpoint inside an ArtifactWriter), so these
tests do not depend on a finetuning run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from lmkit import artifacts
from lmkit.checkpoint import TrainerState, read_checkpoint
from lmkit.config import resolve
from lmkit.data.framing import format_inputs
from lmkit.data.instructions import DEFAULT_TEMPLATE
from lmkit.models.classifier import SequenceClassifier
from lmkit.stages import preprocess
from lmkit.stages.preprocess_config import PreprocessConfig
from lmkit.tokenizer import Tokenizer
from lmkit.training.checkpoint import write_checkpoint
from tests.conftest import paragraphs

LABELS = ["alpha", "beta", "gamma"]


def _write(out: Path, model, model_config, objective: str, tokenizer_path: Path, extra: dict) -> Path:
    recipe = artifacts.make_recipe("checkpoint", {"test": str(out), "objective": objective}, [], [])
    tokenizer = artifacts.load(tokenizer_path, kind="tokenizer")
    with artifacts.ArtifactWriter(out, "checkpoint", recipe, force=True) as writer:
        write_checkpoint(writer.tmp, model, model_config, objective, ({}, {}), TrainerState(), tokenizer, extra)
        writer.commit({}, {"artifacts": [], "files": []}, {"objective": objective, "arch": model_config.arch})
    return out


def classifier_checkpoint(base: Path, out: Path, labels: list[str] = LABELS, seed: int = 0) -> Path:
    """A classifier on ``base``'s body with a random head that predicts every class on real text.

    A barely trained body pools nearly the same vector for every text; the head is made blind to that
    common direction (and large), so what differs between texts decides the class.
    """
    checkpoint = read_checkpoint(base)
    torch.manual_seed(seed)
    pooling = "cls" if checkpoint.model_config.arch == "bert" else "mean"
    model = SequenceClassifier(checkpoint.model_config, len(labels), pooling)
    model.backbone.load_state_dict(checkpoint.build_model().state_dict(), strict=False)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    idx, mask = format_inputs(tokenizer.encode_batch(paragraphs(60)), checkpoint.model_config.arch,
                              checkpoint.model_config.block_size, tokenizer.specials)
    with torch.no_grad():
        pooled = model.pool(idx, mask)  # (N, C)
        common = pooled.mean(dim=0) / pooled.mean(dim=0).norm()
        weight = torch.randn(len(labels), pooled.shape[1])
        weight -= (weight @ common)[:, None] * common[None, :]
        model.head.weight.copy_(weight * 10.0 / (pooled - pooled.mean(dim=0)).std())
    return _write(out, model, checkpoint.model_config, "classify", checkpoint.tokenizer_path,
                  {"head": {"labels": list(labels), "pooling": pooling}})


def sft_checkpoint(base: Path, out: Path) -> Path:
    checkpoint = read_checkpoint(base)
    return _write(out, checkpoint.build_model(), checkpoint.model_config, "sft", checkpoint.tokenizer_path,
                  {"template": DEFAULT_TEMPLATE})


def labeled_records(count: int = 120, labels: list[str] = LABELS, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": text, "label": rng.choice(labels)} for text in paragraphs(count)]


def labeled_dataset(tokenizer: Path, directory: Path, records: list[dict] | None = None,
                    val_fraction: float = 0.3, test_fraction: float = 0.0) -> Path:
    """A labeled dataset artifact tokenized with ``tokenizer`` (made in-process by the real stage)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "labeled.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in (records or labeled_records())))
    out = directory / "labeled"
    preprocess.run(resolve(PreprocessConfig, {}, {
        "inputs": [str(source)], "out": str(out), "label_field": "label", "tokenizer": str(tokenizer),
        "val_fraction": val_fraction, "test_fraction": test_fraction, "filters": ["none"], "near_dedup": False,
        "workers": 1}))
    return out


# -- lm-evaluation-harness tasks over local files ---------------------------------------------------
CHOICE_ITEMS = [
    {"question": "The function returns", "options": ["a value", "the the the"], "label": 0},
    {"question": "Python code is", "options": ["indented", "zzz qqq"], "label": 0},
    {"question": "A class defines", "options": ["xx yy", "objects and methods"], "label": 1},
    {"question": "Raise an", "options": ["exception", "elephant"], "label": 0},
    {"question": "The loop", "options": ["iterates over the items", "q"], "label": 1},
]
ROLLING_TEXTS = paragraphs(30)[-3:]


def write_tasks(directory):
    """A multiple-choice task and a perplexity task, both over local JSONL files."""
    directory.mkdir()
    (directory / "choice.jsonl").write_text("".join(json.dumps(i) + "\n" for i in CHOICE_ITEMS))
    (directory / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ROLLING_TEXTS))
    (directory / "tiny_choice.yaml").write_text(f"""task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / "choice.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{options}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    (directory / "tiny_rolling.yaml").write_text(f"""task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / "texts.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: word_perplexity
""")
    return directory
