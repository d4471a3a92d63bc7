"""Finetuning data: labeled examples from a dataset artifact, instruction records from JSONL,
and the validation split made when the data has none (stratified by label for classification)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmkit import artifacts
from lmkit.data.instructions import render_prompt
from lmkit.data.jsonl import read_jsonl
from lmkit.data.packing import EOS_ID
from lmkit.data.shards import read_shard
from lmkit.errors import UserError
from lmkit.tokenizer import Tokenizer
from lmkit.training.tasks import InstructionExample


@dataclass
class LabeledSplit:
    tokens: list[list[int]]
    labels: np.ndarray


def read_labeled(dataset: artifacts.Artifact, split: str) -> LabeledSplit:
    info = dataset.stats["splits"].get(split) or {"shards": []}
    tokens: list[list[int]] = []
    labels: list[np.ndarray] = []
    for shard in info["shards"]:
        table = read_shard(dataset.file(shard["file"]))
        column = table.column("tokens").combine_chunks()
        offsets, values = column.offsets.to_numpy(), column.values.to_numpy().astype(np.int64)
        tokens.extend(values[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1))
        labels.append(table.column("label").to_numpy())
    return LabeledSplit(tokens, np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, dtype=np.int64))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): ``fraction`` of each class (at least one example of a class
    with two or more) held out, chosen by a seeded shuffle."""
    rng = np.random.default_rng([seed, 1])
    train, validation = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = 0 if len(members) < 2 else max(1, round(len(members) * fraction))
        validation.extend(members[:held])
        train.extend(members[held:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(validation, dtype=np.int64))


def labeled_splits(dataset: artifacts.Artifact, val_fraction: float, seed: int
                   ) -> tuple[LabeledSplit, LabeledSplit, list[str], bool]:
    """Train and validation examples, the label names, and whether validation was split off train.
    Refuses what cannot train a classifier: no labels, fewer than two classes, unseen validation labels."""
    if "labels" not in dataset.stats:
        raise UserError(f"{dataset.path}: has no labels; classify needs a labeled dataset "
                        "(lmkit preprocess --label-field NAME)")
    names = list(dataset.stats["labels"]["names"])
    train = read_labeled(dataset, "train")
    if not train.tokens:
        raise UserError(f"{dataset.path}: the train split is empty")
    made = False
    validation = read_labeled(dataset, "validation")
    if not validation.tokens:
        train_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
        validation = LabeledSplit([train.tokens[i] for i in val_idx], train.labels[val_idx])
        train = LabeledSplit([train.tokens[i] for i in train_idx], train.labels[train_idx])
        made = True
    seen = set(np.unique(train.labels).tolist())
    if len(seen) < 2:
        only = names[next(iter(seen))]
        raise UserError(f"{dataset.path}: every training example has the label {only!r}; a classifier needs "
                        "at least two classes")
    unseen = sorted(set(np.unique(validation.labels).tolist()) - seen)
    if unseen:
        raise UserError(f"{dataset.path}: validation label {names[unseen[0]]!r} never occurs in training "
                        "(the classifier could never predict it); rebalance the splits")
    return train, validation, names, made


def read_instructions(path: Path, tokenizer: Tokenizer, template: str, prompt_field: str, response_field: str,
                      max_tokens: int) -> tuple[list[InstructionExample], int]:
    """Instruction examples of a JSONL file and how many responses were cut to fit ``max_tokens``
    (prompt + response + ``</s>``). A broken record is refused with its line number."""
    examples, cut = [], 0
    for where, record in read_jsonl(path):
        for field in (prompt_field, response_field):
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if value is None else "empty or not a string"
                flag = "--prompt-field" if field == prompt_field else "--response-field"
                raise UserError(f"{where}: field {field!r} is {what} (every record needs a {prompt_field} and a "
                                f"{response_field}; see {flag})")
        prompt = tokenizer.encode(render_prompt(template, record[prompt_field]))
        response = tokenizer.encode(record[response_field]) + [EOS_ID]
        if len(prompt) >= max_tokens:
            raise UserError(f"{where}: the prompt alone is {len(prompt)} tokens, no room for a response within "
                            f"--seq-len {max_tokens - 1}; shorten it or raise --seq-len")
        if len(prompt) + len(response) > max_tokens:
            response = response[:max_tokens - len(prompt)]
            cut += 1
        examples.append(InstructionExample(prompt + response, len(prompt)))
    if not examples:
        raise UserError(f"{path}: no records")
    return examples, cut


def split_off(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random ``fraction`` of ``items`` as validation (at least one, if there are two or more)."""
    order = np.random.default_rng([seed, 1]).permutation(len(items))
    held = 0 if len(items) < 2 else max(1, round(len(items) * fraction))
    chosen = set(order[:held].tolist())
    return ([item for i, item in enumerate(items) if i not in chosen],
            [item for i, item in enumerate(items) if i in chosen])
