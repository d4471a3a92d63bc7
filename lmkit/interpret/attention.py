"""Attention weights of a checkpoint's transformer on a text, per layer and head (``lmkit inspect attention``).

The model computes attention with fused SDPA kernels that never return the weights, so they are
recomputed from the model's own parts: a forward hook on each block's ``attn`` captures its input (the
normed residual stream x) and its output; q and k are rebuilt with the module's ``qkv``, its
``q_norm``/``k_norm`` and ``apply_rotary`` with the model's rotary tables, then
``softmax(q k^T / sqrt(head_dim))`` with the causal mask of a decoder. The weights are then checked
against the module itself: ``out_proj(weights @ v)`` must equal the output it actually produced, so
a change to the attention code cannot go unnoticed and draw wrong pictures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.checkpoint import Checkpoint
from lmkit.data.framing import format_inputs
from lmkit.errors import UserError
from lmkit.models.layers import apply_rotary, distinct_modules
from lmkit.tokenizer import Tokenizer

# Largest |recomputed output - module output| accepted, relative to the output's largest value (float32
# SDPA and the explicit softmax agree to ~1e-6 of it).
TOLERANCE = 1e-4


@dataclass
class AttentionMaps:
    """Attention weights (n_layer, n_head, T, T) of one sequence: row = query (attending) position,
    column = key (attended) position; each row sums to 1."""

    tokens: list[str]      # the pieces, as labels
    ids: list[int]
    weights: torch.Tensor  # (n_layer, n_head, T, T) float32
    causal: bool


def transformer_of(checkpoint: Checkpoint, model: nn.Module) -> nn.Module:
    """The GPT or BERT inside a checkpoint's model (a classifier's backbone); an LSTM is refused."""
    if checkpoint.model_config.arch == "lstm":
        raise UserError(f"{checkpoint.path}: an LSTM (arch lstm) has no attention to show; "
                        "attention maps need a gpt or bert checkpoint")
    return getattr(model, "backbone", model)  # a classifier's or a span model's body


def model_inputs(checkpoint: Checkpoint, text: str) -> list[int]:
    """``text`` as the model reads it: a classifier's layout (format_inputs), ``[CLS] text [SEP]`` for a
    BERT (its training windows' layout), the bare tokens for a GPT (lmkit adds no <s>)."""
    tokens = Tokenizer.from_artifact(checkpoint.tokenizer_path).encode(text)
    config = checkpoint.model_config
    if not tokens:
        raise UserError("--text: gives no tokens; give some text")
    if checkpoint.head is not None:
        ids = format_inputs([tokens], config.arch, config.block_size + 1, checkpoint.specials)[0][0].tolist()
    elif config.arch == "bert":
        ids = [checkpoint.specials.cls, *tokens, checkpoint.specials.sep]
    else:
        ids = tokens
    if len(ids) > config.block_size:
        raise UserError(f"--text: {len(ids)} tokens, more than the model's block size {config.block_size}; "
                        "give a shorter text")
    return ids


def attention_weights(transformer: nn.Module, idx: torch.Tensor, attention_mask: torch.Tensor | None = None
                      ) -> torch.Tensor:
    """Weights (n_layer, B, n_head, T, T) of ``transformer`` (a GPT or BERT, in eval mode) on idx (B, T),
    positions from 0. attention_mask (B, T) bool, True = real token, is for a BERT's padded batches
    (padding is never attended to); a GPT reads unpadded rows."""
    if attention_mask is not None and transformer.blocks[0].attn.causal:
        raise ValueError("attention_weights: an attention mask is for bidirectional models; pass a GPT unpadded rows")
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []  # one per layer, in call order

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        captured.append(((args[0] if args else kwargs["x"]).detach(), output.detach()))

    blocks = transformer.blocks
    handles = [block.attn.register_forward_hook(hook, with_kwargs=True) for block in distinct_modules(blocks)]
    try:
        with torch.no_grad():
            if attention_mask is None:
                transformer.encode(idx)
            else:
                transformer.encode(idx, attention_mask)
    finally:
        for handle in handles:
            handle.remove()
    T = idx.shape[1]
    cos, sin = transformer.rope_cos[:T], transformer.rope_sin[:T]  # (T, hd/2)
    with torch.no_grad():
        layers = [_recompute(block.attn, *captured[i], cos, sin, attention_mask, layer=i)
                  for i, block in enumerate(blocks)]
    return torch.stack(layers)  # (L, B, nh, T, T)


def _recompute(attn: nn.Module, x: torch.Tensor, real_output: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor, attention_mask: torch.Tensor | None, layer: int) -> torch.Tensor:
    B, T, _ = x.shape
    q, k, v = attn.qkv(x).split([attn.q_size, attn.kv_size, attn.kv_size], dim=2)
    q = q.view(B, T, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, nh, T, hd)
    k, v = (t.view(B, T, attn.n_kv_head, attn.head_dim).transpose(1, 2) for t in (k, v))  # (B, nkv, T, hd)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if attn.rotary:
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    group = attn.n_head // attn.n_kv_head  # grouped-query attention: each kv head serves `group` query heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, T, hd)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.head_dim)  # (B, nh, T, T)
    if attn.causal:
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # (T, T) keys after the query
        scores = scores.masked_fill(future, float("-inf"))
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask[:, None, None, :], float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, nh, T, T)
    y = (weights.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, attn.q_size)  # (B, T, nh * hd)
    output = attn.out_proj(y)  # (B, T, C)
    difference = (output - real_output).abs().max().item()
    if difference > TOLERANCE * real_output.abs().max().item() + 1e-7:
        raise RuntimeError(f"layer {layer}: attention recomputed from the weights differs from the model's own "
                           f"output by {difference:.2e}; lmkit/interpret/attention.py no longer matches "
                           "lmkit/models/layers.py")
    return weights


def attention_maps(checkpoint: Checkpoint, model: nn.Module, text: str) -> AttentionMaps:
    """The attention of ``model`` (the checkpoint's, in eval mode) on ``text``."""
    transformer = transformer_of(checkpoint, model)
    ids = model_inputs(checkpoint, text)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    weights = attention_weights(transformer, torch.tensor([ids]))[:, 0]  # (L, nh, T, T)
    return AttentionMaps(tokens=[token_label(tokenizer.id_to_piece(i)) for i in ids], ids=ids,
                         weights=weights.float(), causal=checkpoint.model_config.arch != "bert")


def token_label(piece: str) -> str:
    """A piece as an axis label: SentencePiece's word-start marker as a visible space mark, byte pieces
    of control characters spelled out (a newline would break the label)."""
    names = {"<0x0A>": "\\n", "<0x09>": "\\t", "<0x0D>": "\\r"}
    return names.get(piece, piece.replace("\u2581", "\u2423"))  # ▁ -> ␣
