"""Instruction tuning (SFT): next-token loss on the response (and its closing ``</s>``) only, never
on the prompt, over prompt/response records of a JSONL file.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from lmkit.data.instructions import InstructionExample, read_instructions
from lmkit.data.packing import sample_indices
from lmkit.data.split import seeded_subset, split_off
from lmkit.tokenizer import Tokenizer
from lmkit.training.objectives.base import BatchLayout, Built, Count, ObjectiveInputs, ObjectiveSpec, register
from lmkit.vocab import IGNORE_INDEX


class InstructionTuning:
    """Next-token loss on the response (and its closing ``</s>``) only, never on the prompt."""

    name = "sft"

    def __init__(self, train: list[InstructionExample], validation: list[InstructionExample], layout: BatchLayout,
                 seed: int, device: torch.device, pad: int):
        self.train, self.validation, self.pad = train, validation, pad
        self.layout, self.seed, self.device = layout, seed, device
        self.train_windows = Count(len(train))
        self.val_windows = Count(len(validation)) if validation else None
        self.tokens_per_sample = max(1, round(float(np.mean([len(e.tokens) - 1 for e in train]))))

    def _batch(self, examples: list[InstructionExample]) -> dict[str, torch.Tensor]:
        width = max(len(e.tokens) for e in examples) - 1
        idx = torch.full((len(examples), width), self.pad, dtype=torch.long)
        targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for row, example in enumerate(examples):
            tokens = torch.tensor(example.tokens, dtype=torch.long)
            n = len(example.tokens) - 1
            idx[row, :n] = tokens[:-1]
            # Position t predicts token t + 1: the first response token is predicted at prompt_length - 1.
            targets[row, example.prompt_length - 1:n] = tokens[example.prompt_length:]
        return {"idx": idx.to(self.device), "targets": targets.to(self.device)}

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = sample_indices(len(self.train), self.seed, start, self.layout.micro_batch)
        return self._batch([self.train[i] for i in indices])

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return model(batch["idx"], batch["targets"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["idx"], batch["targets"], return_logits=False)[1]  # no logits: the fused loss

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
            logits, loss = model(batch["idx"], batch["targets"])
            chosen = batch["targets"] != IGNORE_INDEX
            n = int(chosen.sum())
            total_loss += loss.float().item() * n
            correct += int((logits.argmax(-1)[chosen] == batch["targets"][chosen]).sum())
            count += n
        mean = total_loss / max(count, 1)
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_token_accuracy": correct / max(count, 1)}


def _build(inputs: ObjectiveInputs) -> Built:
    options = inputs.options
    tokenizer = Tokenizer.from_artifact(inputs.tokenizer.path)
    examples, cut = read_instructions(inputs.data, tokenizer, options.template, options.prompt_field,
                                      options.response_field, inputs.seq_len + 1)
    if cut:
        inputs.notes.append(f"{cut} of {len(examples)} responses were cut to fit --seq-len {inputs.seq_len}")
    train, validation = split_off(examples, options.val_fraction, options.seed)
    chosen = seeded_subset(len(train), options.max_train_examples, options.seed)
    if chosen is not None:
        inputs.notes.append(f"training on {len(chosen)} of {len(train)} examples (--max-train-examples)")
        train = [train[i] for i in chosen]
    inputs.notes.append(f"validation: {len(validation)} of {len(examples)} records held out (--val-fraction "
                        f"{options.val_fraction})")
    objective = InstructionTuning(train, validation, inputs.layout, options.seed, inputs.device, tokenizer.specials.pad)
    return Built(objective, {"template": options.template})


register(ObjectiveSpec("sft", ("gpt", "lstm"), _build, "instruction tuning on prompt/response records",
                       metrics=("val_loss", "val_ppl", "val_token_accuracy")))
