"""Downstream evaluation while pretraining (``pretrain --eval-tasks``), scored at each validation. A task is one of:

- a JSONL file of multiple-choice items, as ``lmkit evaluate --task choice`` reads it, scored by evaluation.choice;
- ``heldout``: two multiple-choice tasks made from the dataset's validation documents (evaluation.heldout), the
  cheap default for a base model on any corpus;
- an lm-evaluation-harness task of ``--harness-include DIR`` (local task files, nothing downloaded), run through
  the adapter ``lmkit evaluate --harness-tasks`` uses.

Their figures join the validation record: ``val_NAME_accuracy`` and ``val_NAME_acc_norm`` (NAME: the file's stem or
the task's name), ``val_TASK_METRIC`` for a harness task, and ``val_tasks_score``: the choice tasks' accuracies
centered on chance and averaged, as nanochat's CORE score centers its tasks ((acc - chance) / (1 - chance); 0 is
guessing, 1 is every item right). Their time is ``eval_tasks_s``. So metrics.jsonl, the trackers and ``lmkit plot``
show them with the rest."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmkit import artifacts
from lmkit import tokenizer as tokenizer_lib
from lmkit.data.shards import read_split, token_lists
from lmkit.errors import UserError
from lmkit.evaluation import heldout
from lmkit.evaluation.choice import ChoiceItem, encode_pair, evaluate_choices, read_choice_file
from lmkit.evaluation.scoring import Inference

HELDOUT_DOCUMENTS = 20  # documents read per item asked for: enough of them are long enough, without reading a corpus


@dataclass
class HarnessTasks:
    """Harness tasks, checked once before the run, run at each validation (loading their local data again)."""

    manager: Any
    names: list[str]
    seed: int


@dataclass
class DownstreamTasks:
    """The tasks, read once before the run; called with the model at each validation (on every rank: the same
    items everywhere, rank 0 logs)."""

    choices: dict[str, list[ChoiceItem]]
    tokenizer: tokenizer_lib.Tokenizer
    max_len: int
    device: torch.device
    batch_size: int
    limit: int
    harness: HarnessTasks | None = None
    chance: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.chance = {name: sum(1 / len(item.choices) for item in items) / len(items)
                       for name, items in self.choices.items()}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        model = getattr(model, "module", model)     # DDP's: the scoring calls encode and lm_head
        started = time.perf_counter()
        # The precision is the validation's autocast, which this runs under.
        inference = Inference(model, self.device, "fp32", self.batch_size, self.tokenizer.specials)
        figures: dict[str, float] = {}
        centered = []
        for name, items in self.choices.items():
            metrics, _ = evaluate_choices(inference, self.tokenizer, items, self.max_len)
            figures.update({f"val_{name}_{key}": value for key, value in metrics.items()})
            centered.append((metrics["accuracy"] - self.chance[name]) / (1 - self.chance[name]))
        if centered:
            figures["val_tasks_score"] = sum(centered) / len(centered)
        if self.harness is not None:
            figures.update(self._harness(inference))
        figures["eval_tasks_s"] = round(time.perf_counter() - started, 3)
        return figures

    def _harness(self, inference: Inference) -> dict[str, float]:
        from lmkit.evaluation import harness

        lm = harness.make_lm(inference, self.tokenizer, self.max_len, self.max_len, generate=None)
        metrics = harness.run_tasks(lm, self.harness.manager, self.harness.names, self.limit, self.harness.seed)
        return {"val_" + name.replace("/", "_"): value for name, value in metrics["metrics"].items()}


def downstream_tasks(values: list[str], limit: int, dataset: artifacts.Artifact, tokenizer: artifacts.Artifact,
                     max_len: int, device: torch.device, batch_size: int, harness_include: str | None, seed: int
                     ) -> DownstreamTasks | None:
    """The --eval-tasks read and checked (a malformed file line, an unknown task, a task with no items: an error
    naming it); None without any."""
    if not values:
        if harness_include:
            raise UserError("--harness-include: names where --eval-tasks finds harness tasks; give --eval-tasks")
        return None
    loaded = tokenizer_lib.load(tokenizer.path)
    choices: dict[str, list[ChoiceItem]] = {}
    harness_names: list[str] = []

    def add(name: str, items: list[ChoiceItem], value: str) -> None:
        if name in choices:
            raise UserError(f"--eval-tasks {value}: another task is named {name!r}; rename one")
        if not items:
            raise UserError(f"--eval-tasks {value}: no items")
        choices[name] = items

    for value in values:
        if value == heldout.SET_NAME:
            made = {name: items for name, items in
                    heldout.tasks(_documents(dataset, limit), loaded, limit or 1000, seed, max_len).items() if items}
            if not made:
                raise UserError(f"--eval-tasks {value}: {dataset.path}'s validation split has too few documents of "
                                f"{1 + heldout.CONTEXT_TOKENS + heldout.CONTINUATION_TOKENS}+ tokens (--val-fraction "
                                "at preprocessing sets its size)")
            for name, items in made.items():
                add(name, items, value)
        elif value.endswith(".jsonl") or Path(value).is_file():
            if not Path(value).is_file():
                raise UserError(f"--eval-tasks {value}: no such file (a JSONL file of context, choices and answer)")
            items = read_choice_file(value, limit)
            _check_fit(items, loaded, max_len, value)
            add(Path(value).stem.replace("-", "_").replace(" ", "_"), items, value)
        elif harness_include:
            harness_names.append(value)
        else:
            raise UserError(f"--eval-tasks {value}: not a file, not '{heldout.SET_NAME}', and no --harness-include "
                            "DIR to find a harness task of that name in")
    return DownstreamTasks(choices, loaded, max_len, device, batch_size, limit,
                           _harness(harness_names, harness_include, seed) if harness_names else None)


def _check_fit(items: list[ChoiceItem], tokenizer: tokenizer_lib.Tokenizer, max_len: int, path: str) -> None:
    """What scoring would refuse at the first validation, refused before the run: a choice with no tokens of its
    own, or longer than the model's window."""
    for item in items:
        for choice in item.choices:
            _, continuation = encode_pair(tokenizer, item.context, choice)
            if not continuation or len(continuation) > max_len:
                why = "has no tokens of its own after the context" if not continuation else (
                    f"takes {len(continuation)} tokens, more than the {max_len}-token window (--seq-len)")
                where = item.id if item.id.startswith(f"{path}:") else f"{path}: item {item.id}"
                raise UserError(f"--eval-tasks {where}: choice {choice!r} {why}")


def _documents(dataset: artifacts.Artifact, limit: int) -> list:
    """The first documents of the validation split, enough for ``limit`` items of each held-out task."""
    wanted = HELDOUT_DOCUMENTS * (limit or 1000)
    documents: list = []
    for batch in read_split(dataset, "validation").batches():
        offsets, values = token_lists(batch.column("tokens"))
        documents += [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
        if len(documents) >= wanted:
            break
    return documents[:wanted]


def _harness(names: list[str], include: str, seed: int) -> HarnessTasks:
    """The tasks found in ``include`` and loaded once, so a missing dataset file or a generation task is refused
    before the run."""
    from lmkit.evaluation import harness

    manager = harness.task_manager(include, flag="--eval-tasks")
    harness.check_tasks(manager, names, include, flag="--eval-tasks")
    for name, output_type in harness.output_types(manager, names).items():
        if output_type == "generate_until":
            raise UserError(f"--eval-tasks {name}: a generation task; pretraining scores likelihoods only "
                            "(run it after training: lmkit evaluate --harness-tasks)")
    return HarnessTasks(manager, names, seed)
