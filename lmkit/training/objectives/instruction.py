"""Instruction tuning (SFT): next-token loss on the response (and its closing ``</s>``) only, never
on the prompt, over prompt/response records of a JSONL file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lmkit.data.instructions import read_instructions
from lmkit.data.packing import LengthGroupedOrder
from lmkit.errors import UserError
from lmkit.tokenizer import Tokenizer
from lmkit.training.objectives.base import (
    BatchLayout,
    Built,
    Count,
    ObjectiveInputs,
    ObjectiveSpec,
    examples_at,
    held_out,
    register,
)
from lmkit.training.objectives.objective_options import HeldOutOptions
from lmkit.vocab import IGNORE_INDEX


@dataclass(frozen=True)
class SFTOptions(HeldOutOptions):
    """What instruction tuning reads besides the held-out split: the flags of the same names."""

    template: str           # the prompt template; {prompt} marks the instruction
    prompt_field: str       # the JSONL field of the instruction
    response_field: str     # and of the response
    pack: bool              # pack a batch's examples into as few rows as fit the window
    group_by_length: bool   # batches of similar lengths (within a seeded shuffle), or drawn at random


class InstructionTuning:
    """Next-token loss on the response (and its closing ``</s>``) only, never on the prompt. The examples say
    which tokens are predicted (``targets()``): an SFT record's response, a conversation's assistant turns
    (objectives/chat.py)."""

    name = "sft"

    def __init__(self, train: list[Any], validation: list[Any], layout: BatchLayout,
                 seed: int, device: torch.device, pad: int, pack_width: int = 0, group_by_length: bool = False):
        """``group_by_length``: batches of examples of similar length (packing.LengthGroupedOrder)."""
        self.train, self.validation, self.pad = train, validation, pad
        self.order = (LengthGroupedOrder([len(e.tokens) for e in train], seed, layout.global_batch)
                      if group_by_length else None)
        self.pack_width = pack_width  # > 0: a batch's examples are packed into rows of at most this many tokens
        self.layout, self.seed, self.device = layout, seed, device
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        self.tokens_per_sample = max(1, round(float(np.mean([len(e.tokens) - 1 for e in train]))))

    def _batch(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        if self.pack_width:
            return self._packed(examples)
        width = max(len(e.tokens) for e in examples) - 1
        idx = torch.full((len(examples), width), self.pad, dtype=torch.long)
        targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example.tokens) - 1
            idx[row, :n] = torch.tensor(example.tokens[:-1], dtype=torch.long)
            targets[row, :n] = torch.tensor(example.targets(), dtype=torch.long)
        return {"idx": idx.to(self.device), "targets": targets.to(self.device)}

    def _packed(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        """The same examples, inputs and targets as _batch, packed into as few rows as first-fit-decreasing
        finds (longest first, each into the first row with room), with ``segments`` telling the model
        where each example starts: attention stays inside an example and its positions start at 0, so
        each example's loss is what it is alone. The mean loss over the batch's targets is unchanged."""
        lengths = [len(e.tokens) - 1 for e in examples]
        rows: list[list[int]] = []  # example indices per row
        room: list[int] = []
        for i in sorted(range(len(examples)), key=lambda i: -lengths[i]):
            row = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
            if row is None:
                rows.append([])
                room.append(self.pack_width)
                row = len(rows) - 1
            rows[row].append(i)
            room[row] -= lengths[i]
        width = max(self.pack_width - free for free in room)
        idx = torch.full((len(rows), width), self.pad, dtype=torch.long)
        targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: padding, a segment of its own
        for r, members in enumerate(rows):
            at = 0
            for i in members:
                example, n = examples[i], lengths[i]
                idx[r, at:at + n] = torch.tensor(example.tokens[:-1], dtype=torch.long)
                targets[r, at:at + n] = torch.tensor(example.targets(), dtype=torch.long)
                segments[r, at:at + n] = i
                at += n
        return {"idx": idx.to(self.device), "targets": targets.to(self.device), "segments": segments.to(self.device)}

    def _model_kwargs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"segments": batch["segments"]} if "segments" in batch else {}

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        return self._batch(examples_at(self.train, self.layout, self.seed, step, micro, rank, self.order))

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch["idx"], batch["targets"], **self._model_kwargs(batch))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["idx"], batch["targets"], return_logits=False, **self._model_kwargs(batch))[1]  # fused loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        if not self.validation:
            return {}
        examples = self.validation
        if max_batches:
            examples = examples[:max_batches * self.layout.micro_batch]
        total_loss, correct, count = 0.0, 0, 0
        size = self.layout.micro_batch
        for start in range(0, len(examples), size):
            batch = self._batch(examples[start:start + size])
            logits, loss = model(batch["idx"], batch["targets"], **self._model_kwargs(batch))
            chosen = batch["targets"] != IGNORE_INDEX
            n = int(chosen.sum())
            total_loss += loss.float().item() * n
            correct += int((logits.argmax(-1)[chosen] == batch["targets"][chosen]).sum())
            count += n
        mean = total_loss / max(count, 1)
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_token_accuracy": correct / max(count, 1)}


def _build(inputs: ObjectiveInputs[SFTOptions]) -> Built:
    options = inputs.options
    tokenizer = Tokenizer.from_artifact(inputs.tokenizer.path)
    examples, cut = read_instructions(inputs.data, tokenizer, options.template, options.prompt_field,
                                      options.response_field, inputs.seq_len + 1)
    if cut:
        inputs.notes.append(f"{cut} of {len(examples)} responses were cut to fit --seq-len {inputs.seq_len}")
    train, validation = held_out(examples, options, inputs.seed, inputs.notes, "records")
    arch = inputs.model_config.arch
    if options.pack and arch != "gpt":
        raise UserError(f"--pack: packs examples with a block-diagonal attention mask, which an {arch} model does "
                        "not have; drop --pack")
    objective = InstructionTuning(train, validation, inputs.layout, inputs.seed, inputs.device, tokenizer.specials.pad,
                                  inputs.seq_len if options.pack else 0, options.group_by_length)
    return Built(objective, {"template": options.template})


register(ObjectiveSpec("sft", ("gpt", "lstm"), _build, "instruction tuning on prompt/response records",
                       metrics=("val_loss", "val_ppl", "val_token_accuracy"), options=SFTOptions))
