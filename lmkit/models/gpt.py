"""GPT: a decoder-only transformer language model (pre-norm RMSNorm, rotary positions, SwiGLU or GELU).

The blocks live in layers.py, shared with the encoder; this file is the model around them.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.layers import Block, init_transformer_weights, rope_tables, token_loss


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=True) for _ in range(config.n_layer))
        self.final_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:  # one matrix to read and write tokens (Press & Wolf 2017)
            self.lm_head.weight = self.tok_emb.weight
        # Derived from the config, so not saved with the weights (non-persistent).
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hd/2)
        init_transformer_weights(self, self.blocks)

    def encode(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, T, C) of idx (B, T): what the output projection and a
        classification head read. Causal: position t sees positions <= t only, so padding placed
        after the real tokens cannot change them."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd/2)
        x = self.emb_dropout(self.tok_emb(idx))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)  # (B, T, C)
        return self.final_norm(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids; targets (B, T) next-token ids or -100. Returns logits (B, T, V) and the
        mean cross entropy over targets that are not -100 (None without targets)."""
        logits = self.lm_head(self.encode(idx))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = token_loss(logits, targets)
        return logits, loss
