"""An LSTM language model (Hochreiter & Schmidhuber 1997): embedding, stacked LSTM, output projection.

A recurrent baseline for the transformers; causal by construction. For generation, ``encode``
carries the recurrent state (h, c) across calls (``new_cache``), so each new token costs one step,
and skips the padding of a left-padded batch, so a padded row gives the same states as the row alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmkit.models.config import ModelConfig
from lmkit.models.layers import INIT_STD
from lmkit.models.loss import linear_cross_entropy, token_loss


class RecurrentState:
    """The LSTM's (h, c) after the positions processed so far: the recurrent model's KV cache."""

    def __init__(self) -> None:
        self.hidden: tuple[torch.Tensor, torch.Tensor] | None = None  # (n_layer, B, C) each
        self.length = 0  # positions processed (padding included)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. drop finished sequences)."""
        if self.hidden is not None:
            self.hidden = (self.hidden[0][:, rows], self.hidden[1][:, rows])


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

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the vocabulary projection reads (the GPT's interface): the states themselves."""
        return hidden

    def new_cache(self, batch_size: int, max_len: int) -> RecurrentState:
        """An empty recurrent state (the same signature as GPT.new_cache; the sizes are not needed)."""
        return RecurrentState()

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: RecurrentState | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) of the last LSTM layer (before output dropout). Causal by construction.

        Generation: ``cache`` carries (h, c) from the earlier positions (idx continues them) and is updated
        in place; ``attention_mask`` (B, S) bool, True = real token, covers the earlier positions and idx's.
        The state steps over padding (the states at padded positions are zeros): each row's real tokens are
        run as one packed sequence (pack_padded_sequence), so a padded row gives the same states as alone.
        """
        B, T = idx.shape
        past = 0 if cache is None else cache.length
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
        length = past + T if attention_mask is None else int(attention_mask.sum(dim=1).max())
        if length > self.config.block_size:  # not a limit of the LSTM, but the length the config promises
            raise ValueError(f"sequence length {length} exceeds block_size {self.config.block_size}")
        x = self.dropout(self.tok_emb(idx))  # (B, T, C)
        hidden = None if cache is None else cache.hidden
        if attention_mask is None or bool(attention_mask[:, past:].all()):  # no padding among these positions
            x, hidden = self.lstm(x, hidden)  # (B, T, C)
        else:
            x, hidden = self._packed(x, attention_mask[:, past:], hidden)  # (B, T, C)
        if cache is not None:
            cache.hidden, cache.length = hidden, past + T
        return x

    def _packed(self, x: torch.Tensor, mask: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run each row's real positions of x (B, T, C) (mask (B, T), True = real) as one sequence."""
        B, T, C = x.shape
        lengths = mask.sum(dim=1)  # (B,)
        if int(lengths.min()) == 0:  # packing needs a length >= 1 (left padding never gives 0)
            raise ValueError("every row needs at least one real token in each call")
        # Real tokens first in each row (a stable sort keeps their order), then pack by length.
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # (B, T)
        gathered = x.gather(1, order[:, :, None].expand(B, T, C))  # (B, T, C)
        packed = pack_padded_sequence(gathered, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.lstm(packed, hidden)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, C), zeros after each row
        return torch.zeros_like(out).scatter_(1, order[:, :, None].expand(B, T, C), out), hidden  # back in place

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, return_logits: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T); targets (B, T) next-token ids or -100. Returns logits (B, T, V) and the loss; with
        targets and ``return_logits=False``, no logits (None) and the loss of loss.linear_cross_entropy."""
        if targets is not None and not return_logits:
            return None, linear_cross_entropy(self.dropout(self.encode(idx)), self.lm_head.weight, None, targets)
        logits = self.lm_head(self.dropout(self.encode(idx)))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = token_loss(logits, targets)
        return logits, loss
