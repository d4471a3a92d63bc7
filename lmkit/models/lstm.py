"""An LSTM language model (Hochreiter & Schmidhuber 1997): embedding, stacked LSTM, output projection.

A recurrent baseline for the transformers; causal by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.layers import INIT_STD, token_loss


class LSTMLanguageModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        # PyTorch applies the dropout between layers only, hence none for a single layer.
        self.lstm = nn.LSTM(config.d_model, config.d_model, num_layers=config.n_layer, batch_first=True,
                            dropout=config.dropout if config.n_layer > 1 else 0.0)
        # The hidden state has the embedding's width, so the output projection can always be tied.
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=INIT_STD)
        if not config.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=INIT_STD)
        # Forget-gate bias 1 so the cells remember by default (Jozefowicz et al. 2015); PyTorch orders
        # the gates input, forget, cell, output. The LSTM weights keep PyTorch's uniform init.
        d = config.d_model
        with torch.no_grad():
            for layer in range(config.n_layer):
                getattr(self.lstm, f"bias_ih_l{layer}")[d:2 * d].fill_(1.0)
                getattr(self.lstm, f"bias_hh_l{layer}")[d:2 * d].zero_()

    def encode(self, idx: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) of the last LSTM layer (before output dropout). Causal by construction."""
        B, T = idx.shape
        if T > self.config.block_size:  # not a limit of the LSTM, but the length the config promises
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        x = self.dropout(self.tok_emb(idx))  # (B, T, C)
        x, _ = self.lstm(x)  # (B, T, C)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T); targets (B, T) next-token ids or -100. Returns logits (B, T, V) and the loss."""
        logits = self.lm_head(self.dropout(self.encode(idx)))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = token_loss(logits, targets)
        return logits, loss
