"""Sequence classification: a pretrained GPT, BERT or LSTM body with a linear head on a pooled vector.

The body keeps its own parameter names (``backbone.*``), so a language-model checkpoint's weights
load into it; its language-model head is removed (a classifier never computes vocabulary logits,
and unused parameters would stall data-parallel training). Pooling: the last real token of a
causal model (which has read the whole input, as in GPT-1 and Llama's sequence classifier), the
first ([CLS]) position of an encoder (Devlin et al. 2019), or the mean over real tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models import build_model
from lmkit.models.config import ModelConfig
from lmkit.models.layers import pool_states

POOLING: dict[str, tuple[str, ...]] = {"gpt": ("last", "mean"), "lstm": ("last", "mean"), "bert": ("cls", "mean")}
# --pooling auto, as measured (benchmarks/finetune.py, benchmarks/recipes.py): the mean of the hidden states for
# transformers (a small causal LM's last position mostly holds what predicts the next token; masked-LM
# pretraining puts no loss on [CLS]), the last state for an LSTM (it has read the whole text). A model imported
# from transformers reads what transformers' classifiers read, so that it exports back (default_pooling).
DEFAULT_POOLING = {"gpt": "mean", "lstm": "last", "bert": "mean"}


def default_pooling(config: ModelConfig, pretrained: bool, imported: bool = False) -> str:
    """--pooling auto for a classifier on a body of ``config`` (``pretrained``: its weights are loaded;
    ``imported``: from transformers, whose classifiers read the last position or BERT's pooler: the
    finetuned model then exports back)."""
    if pretrained and (imported or (config.arch == "bert" and config.pooler)):
        return "cls" if config.arch == "bert" else "last"
    return DEFAULT_POOLING[config.arch]


def classifier_config(config: ModelConfig) -> ModelConfig:
    """The model config a classifier on ``config``'s body has: a classic (post-norm) BERT gains BERT's pooler,
    new when the body has none (as transformers' BertForSequenceClassification starts from BertForMaskedLM)."""
    if config.arch == "bert" and config.post_norm and not config.pooler:
        return dataclasses.replace(config, pooler=True)
    return config


class SequenceClassifier(nn.Module):
    def __init__(self, config: ModelConfig, n_classes: int, pooling: str):
        super().__init__()
        if pooling not in POOLING[config.arch]:
            raise ValueError(f"pooling {pooling!r} does not fit a {config.arch} model "
                             f"(choose one of {', '.join(POOLING[config.arch])})")
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.config, self.n_classes, self.pooling = config, n_classes, pooling
        self.backbone = build_model(config)
        for name in ("lm_head", "mlm_head", "sentence_head"):  # pretraining heads (a tied lm_head's matrix stays)
            if hasattr(self.backbone, name):
                delattr(self.backbone, name)
        self.dropout = nn.Dropout(config.dropout)
        # No bias on a causal body: the head is then exactly Llama's sequence-classification "score".
        self.head = nn.Linear(config.d_model, n_classes, bias=config.arch == "bert")
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)

    def pool(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
             token_types: torch.Tensor | None = None) -> torch.Tensor:
        """One vector (B, C) per row of idx (B, T); attention_mask (B, T) bool, True = real token
        (right padding: real tokens first); token_types (B, T): an encoder's segment ids (pairs)."""
        if self.config.arch == "bert":
            hidden = self.backbone.encode(idx, attention_mask, token_types)  # (B, T, C)
        else:  # causal: padding after the real tokens cannot reach them
            hidden = self.backbone.encode(idx)  # (B, T, C)
        return pool_states(hidden, attention_mask, self.pooling, getattr(self.backbone, "pooler", None))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class logits (B, K) and, with targets (B,) class indices, their mean cross entropy; token_types
        (B, T): segment ids of pairs (an encoder's; a decoder has none)."""
        logits = self.head(self.dropout(self.pool(idx, attention_mask, token_types)))  # (B, K)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss
