"""Extractive question answering's network: a pretrained encoder with a start/end head over its tokens (Devlin
et al. 2019, section 4.2, on SQuAD v1.1). How contexts become windows is lmkit.data.qa_windows'; how the best
answer is found over them, lmkit.evaluation.spans'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models import build_model
from lmkit.models.config import ModelConfig


class SpanExtractor(nn.Module):
    """An encoder and a linear start/end head over its hidden states (transformers' BertForQuestionAnswering
    has the same: ``qa_outputs``). The body keeps its parameter names (``backbone.*``) so a masked-LM
    checkpoint's weights load into it; its language-model head and pooler are removed (unused parameters
    would stall data-parallel training)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch != "bert":
            raise ValueError(f"extractive question answering needs an encoder (bert), not {config.arch}")
        self.config = config
        self.backbone = build_model(config)
        for name in ("lm_head", "mlm_head", "sentence_head"):  # pretraining heads (a tied lm_head's matrix stays)
            if hasattr(self.backbone, name):
                delattr(self.backbone, name)
        self.backbone.pooler = None
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, 2)  # (start, end)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Start and end logits (B, T, 2), -inf at padding, and with targets (B, 2) (the answer's first and
        last row positions; 0 for [CLS]) the mean of the start and end cross entropies (BERT's loss)."""
        hidden = self.backbone.encode(idx, attention_mask, token_types)  # (B, T, C)
        logits = self.head(self.dropout(hidden)).float()  # (B, T, 2)
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask[..., None], float("-inf"))
        loss = None
        if targets is not None:
            loss = (F.cross_entropy(logits[..., 0], targets[:, 0]) + F.cross_entropy(logits[..., 1], targets[:, 1])) / 2
        return logits, loss
