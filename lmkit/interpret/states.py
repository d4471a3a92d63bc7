"""Hidden states of every layer of a checkpoint's transformer, a batch at a time (``lmkit inspect probe``
and ``lmkit inspect embed``).

Layer 0 is what the blocks read (token embeddings, plus positions and token types where the model adds
them); layer i is block i's output, and the last layer is what ``encode`` returns (after the final norm):
what a classification head or the output projection reads. Forward hooks on the embeddings and on each
block capture them from one ordinary forward pass, so they are the model's own activations.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch import nn

from lmkit.checkpoint import Checkpoint
from lmkit.data.framing import format_inputs
from lmkit.errors import UserError
from lmkit.models.classifier import POOLING
from lmkit.models.layers import distinct_modules, pool_states

BATCH_SIZE = 32


def require_transformer(checkpoint: Checkpoint, command: str) -> None:
    """Refuse an LSTM: its stacked layers run as one fused module that shows only the last."""
    if checkpoint.model_config.arch == "lstm":
        raise UserError(f"{checkpoint.path}: an LSTM (arch lstm) does not expose its inner layers; "
                        f"{command} needs a gpt or bert checkpoint")


def transformer_body(checkpoint: Checkpoint, model: nn.Module, command: str) -> nn.Module:
    """The GPT or BERT of a checkpoint's model (a classifier's backbone); an LSTM is refused."""
    require_transformer(checkpoint, command)
    return getattr(model, "backbone", model)  # a classifier's or a span model's body


def resolve_pooling(checkpoint: Checkpoint, pooling: str, flag: str = "--pooling") -> str:
    """auto: a classifier's own pooling, else the mean over real tokens."""
    arch = checkpoint.model_config.arch
    if pooling == "auto":
        return checkpoint.head["pooling"] if checkpoint.head is not None else "mean"
    if pooling not in POOLING[arch]:
        raise UserError(f"{flag} {pooling}: not a pooling of a {arch} model (choose auto, "
                        f"{', '.join(POOLING[arch])})")
    return pooling


def encode_layers(body: nn.Module, idx: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """States (B, T, C) of every layer, 0 (embeddings) to n_layer (final), of idx (B, T) right-padded
    (mask (B, T) bool, True = real token; a causal model never lets padding reach the real positions)."""
    captured: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        captured.append(output.detach())

    handles = [body.embeddings.register_forward_hook(keep)]
    handles += [block.register_forward_hook(keep) for block in distinct_modules(body.blocks)]  # in call order
    try:
        with torch.no_grad():
            final = body.encode(idx, mask) if body.config.arch == "bert" else body.encode(idx)
    finally:
        for handle in handles:
            handle.remove()
    return [*captured[:-1], final]


def batches(token_lists: list[list[int]], arch: str, max_len: int, specials, batch_size: int = BATCH_SIZE
            ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """(row indices, idx, mask) over ``token_lists`` in the model's input layout (format_inputs), the rows
    of a batch of similar length (less padding); every row appears once."""
    order = np.argsort([min(len(tokens), max_len) for tokens in token_lists], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        idx, mask = format_inputs([list(token_lists[i]) for i in rows], arch, max_len, specials)
        yield rows, idx, mask


def pooled_layers(body: nn.Module, token_lists: list[list[int]], specials, max_len: int, pooling: str,
                  batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Pooled states (n_layer + 1, N, C) float32 of every text of ``token_lists``, in input order."""
    config = body.config
    out = np.zeros((config.n_layer + 1, len(token_lists), config.d_model), dtype=np.float32)
    for rows, idx, mask in batches(token_lists, config.arch, max_len, specials, batch_size):
        for layer, hidden in enumerate(encode_layers(body, idx, mask)):
            out[layer, rows] = pool_states(hidden.float(), mask, pooling).numpy()
    return out
