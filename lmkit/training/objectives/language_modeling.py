"""Language-modeling objectives over packed windows of a dataset split: causal LM (clm) and
masked LM (mlm). Pretraining trains with them, and finetuning continues with them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from lmkit.data.languages import temperature_shares
from lmkit.data.packing import (CausalWindows, MaskedWindows, MaskingSettings, Mixture, Stream, load_stream,
                                seeded_generator)
from lmkit.errors import UserError
from lmkit.training.objectives.base import (BatchLayout, Built, ObjectiveInputs, ObjectiveSpec, datasets_for,
                                            register)
from lmkit.vocab import IGNORE_INDEX, Specials


class _WindowObjective:
    """What the language-modeling objectives share: windows read at global sample positions,
    the model's own loss, and validation over the first windows of the validation split."""

    def __init__(self, train_windows: Any, val_windows: Any, layout: BatchLayout, seed: int,
                 device: torch.device, seq_len: int):
        self.train_windows, self.val_windows = train_windows, val_windows
        self.layout, self.seed, self.device = layout, seed, device
        self.tokens_per_sample = seq_len

    def _read(self, windows: Any, indices: np.ndarray, keys: list[tuple[int, ...]]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows at ``indices``; ``keys``: each row's identity (its global sample position), which
        seeds anything random about it."""
        raise NotImplementedError

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = self.train_windows.sample(self.seed, start, self.layout.micro_batch)
        positions = range(start, start + self.layout.micro_batch)
        inputs, targets = self._read(self.train_windows, indices, [(position,) for position in positions])
        return {"idx": inputs.to(self.device), "targets": targets.to(self.device)}

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], teacher: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, T, V) and the loss; logits at positions whose target is not IGNORE_INDEX are what a
        distillation teacher's soft targets are compared with."""
        return model(batch["idx"], batch["targets"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["idx"], batch["targets"], return_logits=False)[1]  # no logits: the fused loss

    def _validation_batches(self, max_batches: int):
        """(inputs, targets) over the first ``max_batches`` micro-batches (0: all) of validation."""
        if self.val_windows is None:
            return
        size = self.layout.micro_batch
        count = min(self.val_windows.count, max_batches * size) if max_batches else self.val_windows.count
        for start in range(0, count, size):
            rows = np.arange(start, min(start + size, count))
            yield self._read(self.val_windows, rows, [(_EVAL_KEY, int(row)) for row in rows])


_EVAL_KEY = 2**31 - 1  # validation masks: a key no training position uses


class CausalLM(_WindowObjective):
    """Next-token prediction over packed windows; validation reports loss, perplexity and bits per byte."""

    name = "clm"

    def __init__(self, train: Stream | list[Stream], validation: Stream | None, seq_len: int,
                 layout: BatchLayout, seed: int, device: torch.device, shares: list[float] | None = None):
        val_windows = CausalWindows(validation, seq_len) if validation is not None else None
        super().__init__(_windows(train, shares, seed, lambda stream: CausalWindows(stream, seq_len)), val_windows,
                         layout, seed, device, seq_len)
        self.validation = validation

    def _read(self, windows, indices, keys):
        return windows.batch(indices)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        total_loss, total_tokens = 0.0, 0
        for inputs, targets in self._validation_batches(max_batches):
            _, loss = model(inputs.to(self.device), targets.to(self.device), return_logits=False)
            total_loss += loss.float().item() * targets.numel()
            total_tokens += targets.numel()
        if total_tokens == 0:
            return {}
        mean = total_loss / total_tokens
        # bits per byte: nats per token -> bits, spread over the UTF-8 bytes those tokens encode.
        bpb = mean / math.log(2) / self.validation.bytes_per_token
        return {"val_loss": mean, "val_ppl": math.exp(min(mean, 50.0)), "val_bpb": bpb}


class MaskedLM(_WindowObjective):
    """BERT's masked-LM objective; validation masks with a fixed seed and reports loss and accuracy."""

    name = "mlm"

    def __init__(self, train: Stream | list[Stream], validation: Stream | None, seq_len: int,
                 layout: BatchLayout, seed: int, device: torch.device, vocab_size: int, masking: MaskingSettings,
                 specials: Specials, shares: list[float] | None = None):
        val_windows = MaskedWindows(validation, seq_len, vocab_size, masking, specials) if validation else None
        train_windows = _windows(train, shares, seed,
                                 lambda stream: MaskedWindows(stream, seq_len, vocab_size, masking, specials))
        super().__init__(train_windows, val_windows, layout, seed, device, seq_len)

    def _read(self, windows, indices, keys):
        # Masks depend only on the seed and the global sample position: a resumed run, or one with
        # another split of the same global batch over processes and micro-batches, masks identically.
        return windows.batch(indices, [seeded_generator(self.seed, *key) for key in keys])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        total_loss, correct, masked = 0.0, 0, 0
        for inputs, targets in self._validation_batches(max_batches):
            logits, loss = model(inputs.to(self.device), targets.to(self.device))
            chosen = targets != IGNORE_INDEX
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


def _windows(train: Stream | list[Stream], shares: list[float] | None, seed: int, make: Any) -> Any:
    """One source's windows, or a Mixture of several sources' with their sampling shares."""
    if not isinstance(train, list):
        return make(train)
    return Mixture([make(stream) for stream in train], shares, seed)


def _streams(inputs: ObjectiveInputs, separator: int
             ) -> tuple[Stream | list[Stream], Stream | None, list[float] | None]:
    """The train stream (a list of them for a mixture of datasets), one validation stream (the datasets'
    validation splits concatenated) and the mixture's sampling shares."""
    datasets = datasets_for(inputs)
    trains = [load_stream(dataset, "train", separator) for dataset in datasets]
    with_validation = [dataset for dataset in datasets if (dataset.stats["splits"].get("validation") or {})
                       .get("documents")]
    validation = load_stream(with_validation, "validation", separator) if with_validation else None
    if len(trains) == 1:
        return trains[0], validation, None
    shares = mixture_shares([len(stream) for stream in trains], getattr(inputs.options, "weights", []),
                            getattr(inputs.options, "mix_alpha", None))
    return trains, validation, shares


def mixture_shares(tokens: list[int], weights: list[float], alpha: float | None) -> list[float]:
    """Sampling shares of the datasets: --weights normalized, or each dataset's share of the tokens to the
    power --mix-alpha (XLM's temperature; unset: 1, in proportion to size)."""
    if weights:
        total = float(sum(weights))
        return [w / total for w in weights]
    shares = temperature_shares({str(i): float(n) for i, n in enumerate(tokens)}, 1.0 if alpha is None else alpha)
    return [shares[str(i)] for i in range(len(tokens))]


def _build_clm(inputs: ObjectiveInputs) -> Built:
    train, validation, shares = _streams(inputs, inputs.specials.eos)
    return Built(CausalLM(train, validation, inputs.seq_len, inputs.layout, inputs.options.seed, inputs.device,
                          shares))


def _build_mlm(inputs: ObjectiveInputs) -> Built:
    if inputs.seq_len < 4:
        raise UserError("--seq-len: masked LM windows need at least 4 tokens ([CLS] ... [SEP])")
    options = inputs.options
    train, validation, shares = _streams(inputs, inputs.specials.require("sep", "masked-LM windows"))
    masking = MaskingSettings(options.mask_prob, options.mask_replace, options.mask_random)
    return Built(MaskedLM(train, validation, inputs.seq_len, inputs.layout, options.seed, inputs.device,
                          inputs.model_config.vocab_size, masking, inputs.specials, shares))


register(ObjectiveSpec("clm", ("gpt", "lstm"), _build_clm, "causal language modeling (next token) over packed "
                       "documents", metrics=("val_loss", "val_ppl", "val_bpb"), unit="windows", fixed_shapes=True))
register(ObjectiveSpec("mlm", ("bert",), _build_mlm, "masked language modeling (BERT's 80/10/10 corruption)",
                       metrics=("val_loss", "val_ppl", "val_mlm_accuracy"), unit="windows", fixed_shapes=True))
