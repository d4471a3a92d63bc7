"""Transformer building blocks shared by the decoder (gpt.py) and the encoder (bert.py).

Read top to bottom: rotary position embeddings, attention, feed-forward layers, the pre-norm
block that combines them, and the initialization both models use. The loss is here too: every
model (the LSTM included) computes it the same way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig

INIT_STD = 0.02  # GPT-2 (Radford et al. 2019) and BERT both draw weights from N(0, 0.02)
IGNORE_INDEX = -100  # targets with this value do not count in a loss (padding, prompts, unmasked tokens)


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy of logits (B, T, V) over the targets (B, T) that are not IGNORE_INDEX.

    Computed in float32 whatever the logits' dtype (bf16 log-softmax over a large vocabulary is lossy).
    """
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)


# -- rotary position embeddings (RoFormer, Su et al. 2021) --------------------------------------

def rope_tables(head_dim: int, length: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles ``position * theta^(-2i/head_dim)``, each (length, head_dim/2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hd/2]) by its position's angle; x (B, nh, T, hd), cos/sin (T, hd/2).

    This is the "rotate half" pairing of GPT-NeoX and Hugging Face Llama (not RoFormer's interleaved
    pairs), so exported weights need no permutation. q·k then depends only on the positions' difference.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hd/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# -- attention -------------------------------------------------------------------------------------

class SelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions, causal (decoder) or bidirectional (encoder)."""

    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.n_head, self.head_dim, self.causal = config.n_head, config.head_dim, causal
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        # QK-norm bounds the attention logits, which keeps training stable at high learning rates
        # (Dehghani et al. 2023; OLMo 2; Gemma 3 normalizes per head, as here).
        self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C); cos/sin (T, hd/2) for the positions of x; attention_mask (B, T) bool, True = real token."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        # A KV cache would go here: append this step's rotated k and v to the cached ones
        # (cos/sin then start at the cache length) before attending.
        mask = None if attention_mask is None else attention_mask[:, None, None, :]  # (B, 1, 1, T) keys
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.out_proj(y))


# -- feed-forward ----------------------------------------------------------------------------------

class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the gated feed-forward of Shazeer 2020, as in Llama."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.up = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.down = nn.Linear(config.ffn_dim, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.silu(self.gate(x)) * self.up(x)))  # (B, T, C)


class GeluMLP(nn.Module):
    """down(gelu(up(x))): the feed-forward of GPT-2 and BERT."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.ffn_dim, bias=False)
        self.down = nn.Linear(config.ffn_dim, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))  # (B, T, C)


FEED_FORWARD: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "gelu": GeluMLP}


# -- the block -------------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm residual block (GPT-2, Llama): x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = SelfAttention(config, causal)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = FEED_FORWARD[config.mlp](config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, attention_mask)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)


# -- initialization --------------------------------------------------------------------------------

def init_transformer_weights(model: nn.Module, blocks: nn.ModuleList) -> None:
    """GPT-2 initialization: N(0, 0.02) weights, zero biases, unit norms, and the projections that write
    into the residual stream scaled by 1/sqrt(2 * n_layer) so its variance does not grow with depth."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
    residual_std = INIT_STD / math.sqrt(2 * len(blocks))
    for block in blocks:
        nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
        nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)
