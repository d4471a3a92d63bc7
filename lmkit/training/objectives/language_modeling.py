"""Language-modeling objectives over packed windows of a dataset split: causal LM (clm) and
masked LM (mlm), and masked LM with a sentence-pair task over windows of two segments (mlm+nsp, mlm+sop;
data/sentence_pairs.py). Pretraining trains with them, and finetuning continues with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lmkit.data.languages import temperature_shares
from lmkit.data.packing import (
    CausalWindows,
    MaskedWindows,
    MaskingSettings,
    Mixture,
    Stream,
    load_stream,
    seeded_generator,
)
from lmkit.data.sentence_pairs import SentencePairs, find_boundaries, piece_classes
from lmkit.errors import UserError
from lmkit.training.objectives.base import BatchLayout, Built, ObjectiveInputs, ObjectiveSpec, datasets_for, register
from lmkit.vocab import IGNORE_INDEX, Specials


@dataclass(frozen=True)
class MaskingOptions:
    """What masked LM reads (mlm, and with a sentence-pair task mlm+nsp and mlm+sop): BERT's corruption, the
    flags of the same names."""

    mask_prob: float        # share of tokens chosen for prediction
    mask_replace: float     # of the chosen, share replaced by [MASK]
    mask_random: float      # of the chosen, share replaced by a random token

    def masking(self) -> MaskingSettings:
        return MaskingSettings(self.mask_prob, self.mask_replace, self.mask_random)


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


class SentencePairMLM(_WindowObjective):
    """Masked LM plus a sentence-pair task (BERT's NSP or ALBERT's SOP) on ``[CLS] A [SEP] B [SEP]`` windows:
    the loss is their sum; validation reports each loss, the masked-LM accuracy and the pair task's."""

    def __init__(self, task: str, train: SentencePairs, validation: SentencePairs | None, layout: BatchLayout,
                 seed: int, device: torch.device, seq_len: int):
        super().__init__(train, validation, layout, seed, device, seq_len)
        self.task, self.name = task, f"mlm+{task}"

    def _pairs(self, windows: SentencePairs, indices: np.ndarray, keys: list[tuple[int, ...]]
               ) -> dict[str, torch.Tensor]:
        pairs = windows.batch(indices, self.seed, keys)
        return {"idx": pairs.inputs.to(self.device), "targets": pairs.targets.to(self.device),
                "token_types": pairs.token_types.to(self.device),
                "attention_mask": pairs.attention_mask.to(self.device),
                "sentence_targets": pairs.labels.to(self.device)}

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]:
        start = self.layout.start(step, micro, rank)
        indices = self.train_windows.sample(self.seed, start, self.layout.micro_batch)
        return self._pairs(self.train_windows, indices, [(position,) for position in
                                                         range(start, start + self.layout.micro_batch)])

    def _call(self, model: nn.Module, batch: dict[str, torch.Tensor], return_logits: bool):
        return model(batch["idx"], batch["targets"], batch["attention_mask"], return_logits=return_logits,
                     token_types=batch["token_types"], sentence_targets=batch["sentence_targets"])

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._call(model, batch, False)[1]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]:
        if self.val_windows is None:
            return {}
        size = self.layout.micro_batch
        count = min(self.val_windows.count, max_batches * size) if max_batches else self.val_windows.count
        mlm_loss = sentence_loss = 0.0
        correct = masked = right = pairs = 0
        for start in range(0, count, size):
            rows = np.arange(start, min(start + size, count))
            batch = self._pairs(self.val_windows, rows, [(_EVAL_KEY, int(row)) for row in rows])
            (logits, sentence_logits), _ = self._call(model, batch, True)
            chosen = batch["targets"] != IGNORE_INDEX
            mlm_loss += F.cross_entropy(logits[chosen].float(), batch["targets"][chosen], reduction="sum").item()
            correct += int((logits[chosen].argmax(-1) == batch["targets"][chosen]).sum())
            masked += int(chosen.sum())
            labels = batch["sentence_targets"]
            sentence_loss += F.cross_entropy(sentence_logits.float(), labels, reduction="sum").item()
            right += int((sentence_logits.argmax(-1) == labels).sum())
            pairs += len(rows)
        if masked == 0:
            return {}
        mlm, sentence = mlm_loss / masked, sentence_loss / pairs
        return {"val_loss": mlm + sentence, "val_mlm_loss": mlm, "val_ppl": math.exp(min(mlm, 50.0)),
                "val_mlm_accuracy": correct / masked, f"val_{self.task}_loss": sentence,
                f"val_{self.task}_accuracy": right / pairs}


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
    shares = mixture_shares([len(stream) for stream in trains], inputs.weights, inputs.mix_alpha)
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
    return Built(CausalLM(train, validation, inputs.seq_len, inputs.layout, inputs.seed, inputs.device,
                          shares))


def _build_mlm(inputs: ObjectiveInputs[MaskingOptions]) -> Built:
    if inputs.seq_len < 4:
        raise UserError("--seq-len: masked LM windows need at least 4 tokens ([CLS] ... [SEP])")
    train, validation, shares = _streams(inputs, inputs.specials.require("sep", "masked-LM windows"))
    masking = inputs.options.masking()
    return Built(MaskedLM(train, validation, inputs.seq_len, inputs.layout, inputs.seed, inputs.device,
                          inputs.model_config.vocab_size, masking, inputs.specials, shares))


def _build_sentence_pairs(task: str):
    def build(inputs: ObjectiveInputs[MaskingOptions]) -> Built:
        from lmkit.tokenizer import load as load_tokenizer

        if inputs.more_data:
            raise UserError(f"--objective mlm+{task}: trains on one dataset; a mixture is not supported")
        if inputs.seq_len < 8:
            raise UserError("--seq-len: sentence-pair windows need at least 8 tokens ([CLS] A [SEP] B [SEP])")
        config, specials = inputs.model_config, inputs.specials
        if not config.sentence_head:
            raise UserError(f"--objective mlm+{task}: the model has no sentence-pair head (--sentence-head)")
        dataset = datasets_for(inputs)[0]
        tokenizer = load_tokenizer(inputs.tokenizer.path)
        classes = piece_classes([tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)], specials)
        masking = inputs.options.masking()
        separator = specials.require("sep", "sentence-pair windows")

        def pairs(split: str) -> SentencePairs:
            stream = load_stream(dataset, split, separator)
            return SentencePairs(stream, find_boundaries(stream, classes), task, inputs.seq_len, config.vocab_size,
                                 masking, specials)

        train = pairs("train")
        documents = train.stream.documents
        if train.count == 0:
            raise UserError(f"{inputs.data}: --objective mlm+{task} needs documents of two sentences or more (its "
                            f"pairs are consecutive segments of one document), but each of its {documents} training "
                            "documents is one sentence or line; preprocess whole documents, not one line per record")
        if task == "nsp" and train.boundaries.document_count < 2:
            raise UserError(f"{inputs.data}: --objective mlm+nsp draws its negatives from other documents, but only "
                            "one training document has two sentences; use --objective mlm+sop")
        _, lengths = train.stream.document_spans()
        read = int(lengths[np.unique(train.boundaries.documents)].sum()) / max(int(lengths.sum()), 1)
        inputs.notes.append(f"{task}: {train.count:,} sentence boundaries in {train.boundaries.document_count:,} of "
                            f"{documents:,} training documents, {read:.0%} of the training tokens"
                            + ("; the others are one sentence each and not read: keep documents whole "
                               "(preprocess --split-by file) to train on more of the text" if read < 0.8 else ""))
        has_validation = (dataset.stats["splits"].get("validation") or {}).get("documents")
        validation = pairs("validation") if has_validation else None
        if validation is not None and validation.count == 0:
            validation = None
        return Built(SentencePairMLM(task, train, validation, inputs.layout, inputs.seed, inputs.device,
                                     inputs.seq_len))
    return build


register(ObjectiveSpec("clm", ("gpt", "lstm"), _build_clm, "causal language modeling (next token) over packed "
                       "documents", metrics=("val_loss", "val_ppl", "val_bpb"), unit="windows", fixed_shapes=True))
register(ObjectiveSpec("mlm", ("bert",), _build_mlm, "masked language modeling (BERT's 80/10/10 corruption)",
                       metrics=("val_loss", "val_ppl", "val_mlm_accuracy"), unit="windows", fixed_shapes=True,
                       options=MaskingOptions))
for _task, _what in (("nsp", "BERT's next-sentence prediction"), ("sop", "ALBERT's sentence-order prediction")):
    register(ObjectiveSpec(f"mlm+{_task}", ("bert",), _build_sentence_pairs(_task),
                           f"masked language modeling plus {_what} on pairs of segments",
                           metrics=("val_loss", "val_mlm_loss", "val_ppl", "val_mlm_accuracy", f"val_{_task}_loss",
                                    f"val_{_task}_accuracy"), unit="pairs", fixed_shapes=True,
                           options=MaskingOptions))
