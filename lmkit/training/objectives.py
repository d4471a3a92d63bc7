"""Training objectives: what a batch is, what the loss is, and how validation is measured.

The training loop knows nothing else about the task. Registered by name; each lists the
architectures it fits, so a mismatch (MLM on a GPT) is refused before any compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from lmkit.data.packing import (CausalWindows, MaskedWindows, MaskingSettings, TokenStream, sample_indices)


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch splits into micro-batches across gradient accumulation and ranks."""

    micro_batch: int
    accumulation: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    def start(self, step: int, micro: int, rank: int) -> int:
        """Global sample position of (step, micro-batch, rank): rank-interleaved within a step."""
        return step * self.global_batch + (micro * self.world_size + rank) * self.micro_batch


class Objective(Protocol):
    name: str
    tokens_per_sample: int

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]: ...


class CausalLM:
    """Next-token prediction over packed windows; validation reports loss, perplexity and bits per byte."""

    name = "clm"
    archs = ("gpt", "lstm")

    def __init__(self, train: TokenStream, validation: TokenStream | None, seq_len: int, layout: BatchLayout,
                 seed: int, device: torch.device):
        self.train_windows = CausalWindows(train, seq_len)
        self.val_windows = CausalWindows(validation, seq_len) if validation is not None else None
        self.validation = validation
        self.layout, self.seed, self.device = layout, seed, device
        self.tokens_per_sample = seq_len

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = sample_indices(self.train_windows.count, self.seed, start, self.layout.micro_batch)
        inputs, targets = self.train_windows.batch(indices)
        return {"idx": inputs.to(self.device), "targets": targets.to(self.device)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        _, loss = model(batch["idx"], batch["targets"])
        return loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        if self.val_windows is None or self.val_windows.count == 0:
            return {}
        batch_size = self.layout.micro_batch
        count = min(self.val_windows.count, max_batches * batch_size) if max_batches else self.val_windows.count
        total_loss, total_tokens = 0.0, 0
        for start in range(0, count, batch_size):
            indices = np.arange(start, min(start + batch_size, count))
            inputs, targets = self.val_windows.batch(indices)
            _, loss = model(inputs.to(self.device), targets.to(self.device))
            total_loss += loss.float().item() * targets.numel()
            total_tokens += targets.numel()
        mean = total_loss / total_tokens
        # bits per byte: nats per token -> bits, spread over the UTF-8 bytes those tokens encode.
        bpb = mean / math.log(2) / self.validation.bytes_per_token
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_bpb": bpb}


_EVAL_KEY = 2**31 - 1  # validation masks: a key no training step uses


class MaskedLM:
    """BERT's masked-LM objective; validation masks with a fixed seed and reports loss and accuracy."""

    name = "mlm"
    archs = ("bert",)

    def __init__(self, train: TokenStream, validation: TokenStream | None, seq_len: int, layout: BatchLayout,
                 seed: int, device: torch.device, vocab_size: int, masking: MaskingSettings):
        self.train_windows = MaskedWindows(train, seq_len, vocab_size, masking)
        self.val_windows = MaskedWindows(validation, seq_len, vocab_size, masking) if validation else None
        self.layout, self.seed, self.device = layout, seed, device
        self.tokens_per_sample = seq_len

    def _generator(self, *key: int) -> torch.Generator:
        # Masks depend only on the seed and the global sample position: a resumed run, or one with
        # another split of the same global batch over processes and micro-batches, masks identically.
        generator = torch.Generator()
        generator.manual_seed(int(np.random.SeedSequence([self.seed, *key]).generate_state(1)[0]))
        return generator

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = sample_indices(self.train_windows.count, self.seed, start, self.layout.micro_batch)
        inputs, targets = self.train_windows.batch(indices, self._generator(start))
        return {"idx": inputs.to(self.device), "targets": targets.to(self.device)}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        _, loss = model(batch["idx"], batch["targets"])
        return loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        if self.val_windows is None or self.val_windows.count == 0:
            return {}
        batch_size = self.layout.micro_batch
        count = min(self.val_windows.count, max_batches * batch_size) if max_batches else self.val_windows.count
        total_loss, correct, masked = 0.0, 0, 0
        for batch_index, start in enumerate(range(0, count, batch_size)):
            indices = np.arange(start, min(start + batch_size, count))
            inputs, targets = self.val_windows.batch(indices, self._generator(_EVAL_KEY, batch_index))
            logits, loss = model(inputs.to(self.device), targets.to(self.device))
            chosen = targets != -100
            n = int(chosen.sum())
            if n == 0:
                continue
            total_loss += loss.float().item() * n
            correct += int((logits.argmax(-1).cpu()[chosen] == targets[chosen]).sum())
            masked += n
        if masked == 0:
            return {}
        mean = total_loss / masked
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_mlm_accuracy": correct / masked}


OBJECTIVES: dict[str, Any] = {"clm": CausalLM, "mlm": MaskedLM}
DEFAULT_OBJECTIVE = {"gpt": "clm", "lstm": "clm", "bert": "mlm"}
