"""Label prediction with a classifier checkpoint: the most likely label and every label's probability.

Inputs are framed exactly as finetuning framed them (``lmkit.models.classifier.format_inputs``); a text
longer than the classifier's window is read as finetuning read it: overlapping chunks whose class logits
are aggregated, or (``--long-text cut``) its beginning, with a warning.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.models.classifier import aggregate_logits, chunk_texts, format_inputs, long_text_settings
from lmkit.progress import reporter
from lmkit.tokenizer import Tokenizer


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]  # every label, in the checkpoint's label order

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities}


@torch.no_grad()
def classify(model: nn.Module, tokenizer: Tokenizer, labels: list[str], texts: list[str], batch_size: int = 8,
             names: list[str] | None = None, head: dict | None = None) -> list[Prediction]:
    """One prediction per text; ``names`` label the texts in warnings (default "text 1", ...). ``head`` (the
    checkpoint's) says how the classifier was finetuned: its window (max_len) and how it reads a longer
    text (long_text: its chunks' logits averaged or maxed, or its beginning alone; without a head, cut)."""
    names = names or [f"text {i + 1}" for i in range(len(texts))]
    arch = model.config.arch
    max_len = int((head or {}).get("max_len") or model.config.block_size)
    long_text, stride = long_text_settings(head, arch, max_len) if head is not None else ("cut", None)
    token_lists = tokenizer.encode_batch(texts)
    device = model.backbone.tok_emb.weight.device  # an embedding: stays a float parameter when quantized
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
    probabilities = torch.softmax(aggregate_logits(logits, owner, len(texts), long_text), dim=-1).tolist()
    predictions = []
    for row in probabilities:
        best = max(range(len(labels)), key=row.__getitem__)
        predictions.append(Prediction(labels[best], dict(zip(labels, row))))
    if cut:
        reporter.warn(f"{', '.join(cut[:5])}{', ...' if len(cut) > 5 else ''}: longer than the model's window "
                      f"{max_len}; classified from the beginning of the text (as in training)")
    return predictions
