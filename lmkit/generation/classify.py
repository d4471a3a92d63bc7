"""Label prediction with a classifier checkpoint: the most likely label and every label's probability.

Inputs are framed exactly as finetuning framed them (``lmkit.data.framing.format_inputs``); a text
longer than the classifier's window is read as finetuning read it: overlapping chunks whose class logits
are aggregated, or (``--long-text cut``) its beginning, with a warning. A pair classifier (finetuned on a
pair dataset) reads two texts as one input, cut longest first (``format_pair_inputs``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.data.framing import (
    aggregate_logits,
    chunk_texts,
    format_inputs,
    format_pair_inputs,
    long_text_settings,
    pair_uncut,
)
from lmkit.progress import reporter
from lmkit.tokenizer import Tokenizer


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # every label, in the checkpoint's label order

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities}


def reads_pairs(head: dict | None) -> bool:
    """Whether a classifier with this checkpoint head was finetuned on pairs of texts (and reads them)."""
    return bool((head or {}).get("pairs"))


@torch.no_grad()
def classify(model: nn.Module, tokenizer: Tokenizer, labels: list[str], texts: list[str], batch_size: int = 8,
             names: list[str] | None = None, head: dict | None = None, pairs: list[str] | None = None
             ) -> list[Prediction]:
    """One prediction per text; ``names`` label the texts in warnings (default "text 1", ...). ``head`` (the
    checkpoint's) says how the classifier was finetuned: its window (max_len) and how it reads a longer
    text (long_text: its chunks' logits averaged or maxed, or its beginning alone; without a head, cut).
    ``pairs``: each text's second text, for a pair classifier."""
    names = names or [f"text {i + 1}" for i in range(len(texts))]
    arch = model.config.arch
    max_len = int((head or {}).get("max_len") or model.config.block_size)
    device = model.backbone.tok_emb.weight.device  # an embedding: stays a float parameter when quantized
    if pairs is not None:
        return _classify_pairs(model, tokenizer, labels, texts, pairs, batch_size, names, max_len, device)
    long_text, stride = long_text_settings(head, arch, max_len) if head is not None else ("cut", None)
    token_lists = tokenizer.encode_batch(texts)
    chunks, owner = chunk_texts(token_lists, arch, max_len, long_text, stride)
    logits = torch.zeros((len(chunks), len(labels)), dtype=torch.float32)
    cut = []
    for start in range(0, len(chunks), batch_size):
        batch = chunks[start:start + batch_size]
        idx, mask = format_inputs(batch, arch, max_len, tokenizer.specials)
        if long_text == "cut":
            _, uncut = format_inputs(batch, arch, sys.maxsize, tokenizer.specials)  # the framing without a limit
            cut += [names[start + i] for i in torch.nonzero(uncut.sum(1) > mask.sum(1)).flatten().tolist()]
        logits[start:start + len(batch)] = model(idx.to(device), attention_mask=mask.to(device))[0].float().cpu()
    probabilities = torch.softmax(aggregate_logits(logits, owner, len(texts), long_text), dim=-1)
    if cut:
        reporter.warn(f"{', '.join(cut[:5])}{', ...' if len(cut) > 5 else ''}: longer than the model's window "
                      f"{max_len}; classified from the beginning of the text (as in training)")
    return _predictions(probabilities, labels)


def _classify_pairs(model: nn.Module, tokenizer: Tokenizer, labels: list[str], texts: list[str], pairs: list[str],
                    batch_size: int, names: list[str], max_len: int, device: torch.device) -> list[Prediction]:
    """Pairs framed as one input each and cut longest first, as finetuning read them, with a warning."""
    arch = model.config.arch
    firsts, seconds = tokenizer.encode_batch(texts), tokenizer.encode_batch(pairs)
    logits = torch.zeros((len(texts), len(labels)), dtype=torch.float32)
    for start in range(0, len(texts), batch_size):
        stop = start + batch_size
        idx, mask, types = format_pair_inputs(firsts[start:stop], seconds[start:stop], arch, max_len,
                                              tokenizer.specials)
        logits[start:stop] = model(idx.to(device), attention_mask=mask.to(device),
                                   token_types=types.to(device))[0].float().cpu()
    cut = [name for name, a, b in zip(names, firsts, seconds)
           if not pair_uncut(len(a), len(b), arch, max_len)]
    if cut:
        reporter.warn(f"{', '.join(cut[:5])}{', ...' if len(cut) > 5 else ''}: the pair is longer than the model's "
                      f"window {max_len}; its longer text was cut (as in training)")
    return _predictions(torch.softmax(logits, dim=-1), labels)


def _predictions(probabilities: torch.Tensor, labels: list[str]) -> list[Prediction]:
    predictions = []
    for row in probabilities.tolist():
        best = max(range(len(labels)), key=row.__getitem__)
        predictions.append(Prediction(labels[best], dict(zip(labels, row))))
    return predictions
