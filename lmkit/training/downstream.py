"""Downstream evaluation while pretraining (``pretrain --eval-tasks``): zero-shot multiple-choice tasks, the
JSONL files ``lmkit evaluate --task choice`` reads, scored by evaluation.choice at each validation. Their figures
join the validation record (``val_NAME_accuracy``, ``val_NAME_acc_norm``; NAME: the file's stem) and their
time is logged as ``eval_tasks_s``, so metrics.jsonl, the trackers and ``lmkit plot`` show them with the rest."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lmkit import artifacts
from lmkit import tokenizer as tokenizer_lib
from lmkit.errors import UserError
from lmkit.evaluation.choice import ChoiceItem, evaluate_choices, read_choice_file
from lmkit.evaluation.scoring import Inference


@dataclass
class ChoiceTasks:
    """The tasks, read once before the run; called with the model at each validation (on every rank: the same
    items everywhere, rank 0 logs)."""

    tasks: dict[str, list[ChoiceItem]]
    tokenizer: tokenizer_lib.Tokenizer
    max_len: int
    device: torch.device
    batch_size: int

    def __call__(self, model: nn.Module) -> dict[str, float]:
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        model = getattr(model, "module", model)     # DDP's: the scoring calls encode and lm_head
        started = time.perf_counter()
        figures: dict[str, float] = {}
        for name, items in self.tasks.items():
            # The precision is the validation's autocast, which this runs under.
            inference = Inference(model, self.device, "fp32", self.batch_size, self.tokenizer.specials)
            metrics, _ = evaluate_choices(inference, self.tokenizer, items, self.max_len)
            figures.update({f"val_{name}_{key}": value for key, value in metrics.items()})
        figures["eval_tasks_s"] = round(time.perf_counter() - started, 3)
        return figures


def choice_tasks(paths: list[str], limit: int, tokenizer: artifacts.Artifact, max_len: int, device: torch.device,
                 batch_size: int) -> ChoiceTasks | None:
    """The --eval-tasks files read and checked (a malformed line is an error naming it); None without any."""
    if not paths:
        return None
    tasks: dict[str, list[ChoiceItem]] = {}
    for path in paths:
        name = Path(path).stem.replace("-", "_").replace(" ", "_")
        if name in tasks:
            raise UserError(f"--eval-tasks {path}: another task is named {name!r} (the file's stem); rename one")
        if not Path(path).is_file():
            raise UserError(f"--eval-tasks {path}: no such file (a JSONL file of context, choices and answer)")
        items = read_choice_file(path, limit)
        if not items:
            raise UserError(f"--eval-tasks {path}: no items")
        tasks[name] = items
    return ChoiceTasks(tasks, tokenizer_lib.load(tokenizer.path), max_len, device, batch_size)
