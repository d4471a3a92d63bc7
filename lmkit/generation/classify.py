"""Label prediction with a classifier checkpoint: the most likely label and every label's probability.

Inputs are framed exactly as finetuning framed them (``lmkit.models.classifier.format_inputs``); a text
longer than the model's block size keeps its beginning, as in training, with a warning.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.models.classifier import format_inputs
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
             names: list[str] | None = None) -> list[Prediction]:
    """One prediction per text; ``names`` label the texts in warnings (default "text 1", ...)."""
    names = names or [f"text {i + 1}" for i in range(len(texts))]
    arch, block_size = model.config.arch, model.config.block_size
    token_lists = tokenizer.encode_batch(texts)
    device = model.backbone.tok_emb.weight.device  # an embedding: stays a float parameter when quantized
    predictions, cut = [], []
    for start in range(0, len(texts), batch_size):
        batch = token_lists[start:start + batch_size]
        idx, mask = format_inputs(batch, arch, block_size, tokenizer.specials)
        _, uncut = format_inputs(batch, arch, sys.maxsize, tokenizer.specials)  # the framing without a length limit
        cut += [names[start + i] for i in torch.nonzero(uncut.sum(1) > mask.sum(1)).flatten().tolist()]
        logits, _ = model(idx.to(device), attention_mask=mask.to(device))  # (b, K)
        probs = torch.softmax(logits.float(), dim=-1).tolist()
        for row in probs:
            best = max(range(len(labels)), key=row.__getitem__)
            predictions.append(Prediction(labels[best], dict(zip(labels, row))))
    if cut:
        reporter.warn(f"{', '.join(cut[:5])}{', ...' if len(cut) > 5 else ''}: longer than the model's block size "
                      f"{block_size}; classified from the beginning of the text (as in training)")
    return predictions
