"""Transformer building blocks shared by the decoder (gpt.py) and the encoder (bert.py).

Read top to bottom: rotary position embeddings, attention (with the KV caches a decoder uses to
generate: one batch's, or a server's slots of continuous batching; grouped-query when it has fewer
key/value heads), feed-forward layers, the block (pre-norm, or post-norm as in BERT) that combines
them, the embeddings, and the initialization both models use.
The settings of ``ModelConfig`` (norm, positions, bias, mlp ...) cover lmkit's modern models and the
classic GPT-2 and BERT, and the Hugging Face families ``lmkit import`` reads. The loss every model computes
is in loss.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig

INIT_STD = 0.02  # GPT-2 (Radford et al. 2019) and BERT both draw weights from N(0, 0.02)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` whose gain takes the input's dtype. Under bf16 autocast a norm after a linear layer
    (qk-norm, BERT's MLM head) reads bf16 while its gain is fp32, and torch's fused kernel needs one dtype:
    otherwise it warns and falls back to a slow composite path. In fp32 nothing changes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


# -- rotary position embeddings (RoFormer, Su et al. 2021) --------------------------------------

def rope_tables(head_dim: int, length: int, theta: float,
                config: ModelConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles ``position * theta^(-2i/head_dim)``, each (length, head_dim/2),
    with ``config``'s frequency scaling (``--rope-scaling``) applied: llama3; linear, position interpolation
    (Chen et al. 2023), every frequency divided by the factor, so positions up to factor x the trained length
    turn through the angles the model knows; ntk, NTK-aware scaling (bloc97 2023), theta multiplied by
    factor^(hd/(hd-2)), which keeps the highest frequency and divides the lowest by the factor."""
    scaling = "none" if config is None else config.rope_scaling
    if scaling == "ntk":
        theta = theta * config.rope_factor ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    if scaling == "llama3":
        inv_freq = llama3_frequencies(inv_freq, config)
    elif scaling == "linear":
        inv_freq = inv_freq / config.rope_factor
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def llama3_frequencies(inv_freq: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """Llama 3.1's RoPE scaling (Meta 2024): wavelengths longer than original_length / low_freq_factor are
    stretched by ``factor``, those shorter than original_length / high_freq_factor kept, and the ones
    between interpolated smoothly; this is transformers' ``rope_type: llama3``."""
    factor, low, high = config.rope_factor, config.rope_low_freq_factor, config.rope_high_freq_factor
    original = config.rope_original_length
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, smoothed, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x[i], x[i + hd/2]) by its position's angle; x (B, nh, T, hd), cos/sin (T, hd/2),
    or (B, 1, T, hd/2) when each row has its own positions (left-padded batches).

    This is the "rotate half" pairing of GPT-NeoX and Hugging Face Llama (not RoFormer's interleaved
    pairs), so exported weights need no permutation. q·k then depends only on the positions' difference.
    """
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hd/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


# -- attention -------------------------------------------------------------------------------------

class KeyPadding(NamedTuple):
    """Which keys are real: (B, S) bool, True = a real token, over the S keys (cached positions and new ones);
    what a padded batch's caller knows. The attention turns it into :class:`AllowedKeys`."""

    real: torch.Tensor


class AllowedKeys(NamedTuple):
    """Which keys each query may attend to, ready for SDPA's ``attn_mask``: (B, 1, T, S), or (B, 1, 1, S) when
    every query sees the same keys; True = may attend."""

    allowed: torch.Tensor


class ScoreBias(NamedTuple):
    """Added to the attention scores before the softmax: (T, T) or (B, 1, T, T), 0 where a query may attend
    and -inf elsewhere. The attention is then written out (:func:`explicit_attention`), which trains faster
    than SDPA on a CPU for short windows."""

    bias: torch.Tensor


# The kinds of attention mask a block takes; None: no mask (causal models attend causally).
AttentionMask = KeyPadding | AllowedKeys | ScoreBias


def attention_mask_4d(key_mask: torch.Tensor, query_length: int, causal: bool) -> torch.Tensor:
    """The boolean mask SDPA takes (True = may attend) for the last ``query_length`` (T) of S positions:
    (B, 1, T, S) when causal, else (B, 1, 1, S). key_mask (B, S) is True on real tokens.

    A query sees the real keys (at or before it when causal). A causal query also always sees itself:
    a padding query before a row's first real token then has something to attend to (a fully masked
    row gives NaN, which a later layer's zero attention weight would not cancel: 0 * NaN = NaN); its
    output is never read.
    """
    mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
    if not causal:
        return mask
    if query_length == 1:  # the last position (a decoding step): every key is at or before it
        return mask.clone().index_fill_(-1, torch.tensor([key_mask.shape[1] - 1], device=key_mask.device), True)
    S = key_mask.shape[1]
    query_pos = torch.arange(S - query_length, S, device=key_mask.device)[:, None]  # (T, 1)
    key_pos = torch.arange(S, device=key_mask.device)[None, :]  # (1, S)
    return (mask & (key_pos <= query_pos)) | (key_pos == query_pos)  # (B, 1, T, S)


class LayerCache:
    """One layer's rotated keys and values of the positions processed so far, in buffers preallocated for
    ``max_len`` positions, so a decoding step writes one position instead of copying the whole past."""

    def __init__(self, batch_size: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch_size, n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (B, nh, max_len, hd)
        self.values = torch.zeros(shape, dtype=dtype, device=device)  # (B, nh, max_len, hd)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hd) after the cached positions; returns all keys and values (B, nh, S, hd)."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions, room for {self.keys.shape[2]}")
        self.keys[:, :, self.length:end] = k
        self.values[:, :, self.length:end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. drop finished sequences)."""
        self.keys, self.values = self.keys[rows], self.values[rows]


class KVCache:
    """Keys and values of every attention layer of a decoder: each new token then costs one position of
    compute instead of the whole sequence again. The model fills it in place as it runs."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.layers = [LayerCache(batch_size, n_head, head_dim, max_len, dtype, device) for _ in range(n_layer)]

    @property
    def length(self) -> int:
        """Positions processed so far (padding included)."""
        return self.layers[0].length

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.layers:
            layer.select(rows)


class SlotCache:
    """The KV cache of continuous batching: up to ``slots`` sequences of up to ``max_len`` positions side by side,
    each with its own length, so that between two decoding steps a request can join (its prompt written into a
    free slot, all at once or in chunks) and another leave (its slot freed), while the others go on. The model
    reads and extends it through a :class:`SlotBatch`; the scheduler (lmkit.serving.scheduler) keeps the lengths.

    The buffers grow (doubling, copied once) as more slots and longer sequences are used, up to slots x max_len
    positions: a server sized for 32 rows of a 2,048-token context does not hold them all from its start."""

    def __init__(self, n_layer: int, slots: int, n_head: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.slots, self.max_len = slots, max_len
        shape = (min(slots, 4), n_head, min(max_len, 256), head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]  # (slots, nh, L, hd)
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.lengths = [0] * slots  # positions each slot holds

    def reserve(self, slots: int, length: int) -> None:
        """Room for slots 0 .. slots - 1 of ``length`` positions each (at most the limits)."""
        held_slots, _, held_len, _ = self.keys[0].shape
        slots, length = min(slots, self.slots), min(length, self.max_len)
        if slots <= held_slots and length <= held_len:
            return
        grown_slots = min(max(slots, 2 * held_slots if slots > held_slots else held_slots), self.slots)
        grown_len = min(max(length, 2 * held_len if length > held_len else held_len), self.max_len)
        for buffers in (self.keys, self.values):
            for layer, old in enumerate(buffers):
                new = old.new_zeros((grown_slots, old.shape[1], grown_len, old.shape[3]))
                new[:held_slots, :, :held_len] = old
                buffers[layer] = new

    def batch(self, rows: list[int], widths: list[int]) -> SlotBatch:
        """One model call that continues slot ``rows[i]`` with ``widths[i]`` new positions (the input is
        (B, max(widths)), each row's tokens first); ``extend`` records them once the call has run."""
        self.reserve(max(rows) + 1, max(self.lengths[row] for row in rows) + max(widths))
        return SlotBatch(self, rows, widths)

    def extend(self, rows: list[int], widths: list[int]) -> None:
        for row, width in zip(rows, widths, strict=True):
            self.lengths[row] += width

    def move(self, source: int, target: int) -> None:
        """Slot ``source``'s positions into slot ``target`` (which they replace); ``source`` is then empty."""
        length = self.lengths[source]
        for keys, values in zip(self.keys, self.values) if length else ():  # (an empty slot may lie past the buffers)
            keys[target, :, :length] = keys[source, :, :length]
            values[target, :, :length] = values[source, :, :length]
        self.lengths[target], self.lengths[source] = length, 0

    def read(self, slot: int, start: int, end: int) -> torch.Tensor:
        """A copy of positions [start, end) of a slot: (n_layer, 2, nh, end - start, hd), keys then values."""
        return torch.stack([torch.stack((k[slot, :, start:end], v[slot, :, start:end]))
                            for k, v in zip(self.keys, self.values)])

    def write(self, slot: int, start: int, stored: torch.Tensor) -> None:
        """Put what ``read`` returned at positions [start, ...) of a slot, which then holds them and nothing after."""
        end = start + stored.shape[3]
        self.reserve(slot + 1, end)
        for layer, (keys, values) in enumerate(zip(self.keys, self.values)):
            keys[slot, :, start:end], values[slot, :, start:end] = stored[layer, 0], stored[layer, 1]
        self.lengths[slot] = end


class SlotBatch:
    """What a decoder's ``encode`` takes as its cache to run rows of a :class:`SlotCache` together: row i's tokens
    are at positions lengths[rows[i]] ... of its own slot, its keys and values go there, and it attends to its
    slot's positions up to its own only. Padding after a row's tokens (a row shorter than the widest) reads and
    writes positions past the row's length, which nothing reads before they are written for real (positions
    past the cache are clamped to its last one, which no sequence shorter than max_len reaches)."""

    def __init__(self, cache: SlotCache, rows: list[int], widths: list[int]):
        device = cache.keys[0].device
        starts = [cache.lengths[row] for row in rows]
        T, last = max(widths), cache.max_len - 1
        self.cache, self.rows = cache, rows
        self.span = (rows[0], rows[0] + len(rows)) if rows == list(range(rows[0], rows[0] + len(rows))) else None
        self.start = starts[0] if len(rows) == 1 else None  # one row: plain slices
        self.keys_used = min(max(start + T for start in starts), cache.max_len)  # S
        steps = torch.arange(T, device=device)
        self.positions = (torch.tensor(starts, device=device)[:, None] + steps).clamp(max=last)  # (B, T)
        self.index = torch.tensor(rows, device=device)  # (B,)
        # Rows of equal lengths and widths need no mask: the attention is then causal after the cached keys.
        uniform = len(set(starts)) == 1 and len(set(widths)) == 1
        keys = torch.arange(self.keys_used, device=device)
        self.allowed = None if uniform else (keys <= self.positions[:, :, None])[:, None]  # (B, 1, T, S)
        self.layers = [SlotLayer(self, layer) for layer in range(len(cache.keys))]


class SlotLayer:
    """One layer's part of a :class:`SlotBatch`: what the attention calls ``append`` on, as on a LayerCache."""

    def __init__(self, batch: SlotBatch, layer: int):
        self.batch, self.layer = batch, layer

    # Compiled (a server's --compile), the step breaks its graph here: what this reads of the batch (slots,
    # lengths) changes at every step, and traced it would specialize the graph on those numbers.
    @torch.compiler.disable
    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hd) at each row's positions; returns the rows' keys and values (B, nh, S, hd)."""
        batch = self.batch
        keys, values = batch.cache.keys[self.layer], batch.cache.values[self.layer]
        S = batch.keys_used
        if batch.start is not None:
            row, start = batch.rows[0], batch.start
            keys[row, :, start:start + k.shape[2]], values[row, :, start:start + k.shape[2]] = k[0], v[0]
            return keys[row:row + 1, :, :S], values[row:row + 1, :, :S]
        where = (batch.index[:, None], slice(None), batch.positions)  # (B, T, nh, hd) in the buffers
        keys[where], values[where] = k.transpose(1, 2), v.transpose(1, 2)
        if batch.span is not None:
            return keys[batch.span[0]:batch.span[1], :, :S], values[batch.span[0]:batch.span[1], :, :S]
        return keys[batch.index, :, :S], values[batch.index, :, :S]


# Windows up to this long get explicit attention on a CPU (see explicit_attention); SDPA beyond.
EXPLICIT_ATTENTION_MAX = 256


def causal_bias(length: int) -> torch.Tensor:
    """The additive causal mask (length, length): 0 where a query may attend, -inf above the diagonal."""
    return torch.full((length, length), float("-inf")).triu(1)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                       dropout: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias) v, written out: what a causal model trains with on a CPU for windows
    of up to EXPLICIT_ATTENTION_MAX tokens, where it beats SDPA (whose CPU flash-attention backward is
    slow). Measured on a 2-core Sapphire Rapids, bf16, 16 x 6 heads x 256 x 64, forward and backward of one
    layer: 15 ms against 29 ms for SDPA under torch.compile, which fuses the bias, softmax and casts into one
    pass over the scores (a precomputed bias ran faster than a mask made in the graph, 18.5 ms, or
    masked_fill, 23 ms); a whole gpt-small step 10-30% faster in eager bf16, the same in fp32. At 512
    tokens SDPA wins (38 ms against 57), on a GPU always, and for inference (its flash forward is fast).
    q (B, nh, T, hd); k, v (B, nkv, T, hd); bias (T, T)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: each key/value head serves ``groups`` query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, nh, T, T)
    weights = torch.softmax(scores + bias.to(scores.dtype), dim=-1)
    return F.dropout(weights, dropout) @ v  # (B, nh, T, hd)


class SelfAttention(nn.Module):
    """Multi-head self-attention, causal (decoder) or bidirectional (encoder), with rotary positions
    unless the model adds learned ones to its embeddings. With ``n_kv_head < n_head`` it is grouped-query
    attention: each key/value head serves ``n_head / n_kv_head`` query heads (the cache holds only those)."""

    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim, self.causal = \
            config.n_head, config.kv_heads, config.head_dim, causal
        self.rotary = config.positions == "rope"
        self.q_size, self.kv_size = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        # One fused projection: q (n_head heads), then k and v (n_kv_head heads each).
        self.qkv = nn.Linear(config.d_model, self.q_size + 2 * self.kv_size, bias=config.bias or config.qkv_bias)
        self.out_proj = nn.Linear(self.q_size, config.d_model, bias=config.bias)
        # QK-norm bounds the attention logits, which keeps training stable at high learning rates
        # (Dehghani et al. 2023; OLMo 2; Gemma 3 and Qwen3 normalize per head, as here).
        self.q_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.k_norm = make_norm(config, config.head_dim) if config.qk_norm else None
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                mask: AttentionMask | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, T, C); cos/sin (T, hd/2), or (B, 1, T, hd/2) for per-row positions, of the positions of x
        (None with learned positions).

        mask: which keys the queries may attend to (:data:`AttentionMask`), over the S keys of the cached
        positions and x's; None: all of them (causally for a causal model). cache: this layer's KV cache,
        extended in place with x's keys and values.
        """
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary:  # q and k in one rotation: half the small ops of a decoding step's rotary
            q, k = apply_rotary(torch.cat((q, k), dim=1), cos, sin).split([self.n_head, self.n_kv_head], dim=1)
        # Cached keys are stored rotated: a position's rotation never changes, so it is applied once.
        if cache is not None:
            k, v = cache.append(k, v)  # (B, nkv, S, hd)
        dropout = self.dropout if self.training else 0.0
        if mask is not None and not isinstance(mask, (KeyPadding, AllowedKeys, ScoreBias)):
            raise TypeError(f"mask: a KeyPadding, AllowedKeys or ScoreBias, not {type(mask).__name__}")
        if isinstance(mask, ScoreBias):
            y = explicit_attention(q, k, v, mask.bias, dropout)  # (B, nh, T, hd)
            return dropout_(self.out_proj(y.transpose(1, 2).reshape(B, T, self.q_size)), self.dropout, self.training)
        S = k.shape[2]
        if isinstance(mask, KeyPadding):
            mask = AllowedKeys(attention_mask_4d(mask.real, T, self.causal))  # (B, 1, T, S)
        allowed, is_causal = None, self.causal and T > 1
        if isinstance(mask, AllowedKeys):
            allowed, is_causal = mask.allowed, False
        elif self.causal and S > T and T > 1:  # queries after cached keys: is_causal would align them top-left
            allowed, is_causal = attention_mask_4d(torch.ones(B, S, dtype=torch.bool, device=x.device), T, True), False
        # One query after the cache (T = 1) attends to every key: no mask at all. Without a cache or a
        # mask, is_causal keeps SDPA's fast causal kernels.
        grouped = {"enable_gqa": True} if self.n_kv_head != self.n_head else {}  # torch >= 2.5
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=is_causal, dropout_p=dropout,
                                           **grouped)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.q_size)  # (B, T, nh * hd)
        return dropout_(self.out_proj(y), self.dropout, self.training)


def dropout_(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, not called at all when it would do nothing (evaluation, or p = 0): a decoding step of a
    small model is made of a few hundred small calls, each of which costs a few microseconds."""
    return F.dropout(x, p, training=True) if training and p > 0 else x


# -- feed-forward ----------------------------------------------------------------------------------

class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the gated feed-forward of Shazeer 2020, as in Llama."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.up = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.down = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout_(self.down(F.silu(self.gate(x)) * self.up(x)), self.dropout, self.training)  # (B, T, C)


class GeluMLP(nn.Module):
    """down(gelu(up(x))): the feed-forward of BERT (exact GELU) and GPT-2 (its tanh approximation)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.down = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)
        self.dropout = config.dropout
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.up(x), approximate=self.approximate)
        return dropout_(self.down(hidden), self.dropout, self.training)  # (B, T, C)


FEED_FORWARD: dict[str, type[nn.Module]] = {"swiglu": SwiGLU, "gelu": GeluMLP, "gelu_tanh": GeluMLP}


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    """The model's normalization over ``dim`` features: RMSNorm, or LayerNorm with a bias (GPT-2, BERT)."""
    if config.norm == "layer":
        return nn.LayerNorm(dim, eps=config.norm_eps)
    return RMSNorm(dim, eps=config.norm_eps)


# -- the block -------------------------------------------------------------------------------------

class Block(nn.Module):
    """A residual block. Pre-norm (GPT-2, Llama): x + attn(norm(x)), then x + mlp(norm(x)). Post-norm
    (the original Transformer, BERT): norm(x + attn(x)), then norm(x + mlp(x))."""

    def __init__(self, config: ModelConfig, causal: bool):
        super().__init__()
        self.post_norm = config.post_norm
        self.attn_norm = make_norm(config, config.d_model)
        self.attn = SelfAttention(config, causal)
        self.mlp_norm = make_norm(config, config.d_model)
        self.mlp = FEED_FORWARD[config.mlp](config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                mask: AttentionMask | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        if self.post_norm:
            x = self.attn_norm(x + self.attn(x, cos, sin, mask, cache))  # (B, T, C)
            return self.mlp_norm(x + self.mlp(x))  # (B, T, C)
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)


# -- embeddings ------------------------------------------------------------------------------------

class Embeddings(nn.Module):
    """What the blocks read: token embeddings, plus learned absolute positions and token types where the
    model has them, normalized first in a post-norm model. Rotary models add no positions here."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.embedding_width  # --embedding-dim: ALBERT adds positions and types before projecting
        self.pos_emb = nn.Embedding(config.block_size, width) if config.positions == "learned" else None
        self.type_emb = nn.Embedding(config.type_vocab_size, width) if config.type_vocab_size else None
        self.norm = make_norm(config, width) if config.post_norm else None
        self.dropout = config.dropout
        # (E -> d_model; ALBERT's embedding_hidden_mapping_in)
        self.proj = nn.Linear(width, config.d_model, bias=config.bias) if config.embedding_dim else None

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor,
                token_types: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T, C) already embedded; positions (T,) or (B, T); token_types (B, T) or None (all 0)."""
        x = tokens
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        if self.type_emb is not None:
            if token_types is None:
                x = x + self.type_emb.weight[0]
            else:
                x = x + self.type_emb(token_types)
        if self.norm is not None:
            x = self.norm(x)
        x = dropout_(x, self.dropout, self.training)
        return x if self.proj is None else self.proj(x)  # (B, T, C)


def make_blocks(config: ModelConfig, causal: bool) -> nn.ModuleList:
    """One entry per layer. With --share-layers G, G distinct blocks, each the same module at n_layer / G
    consecutive entries (ALBERT's groups): parameters() and the optimizer see each once, state_dict and
    safetensors store each once, and code that walks the layers (KV caches, hooks) still sees n_layer."""
    if not config.share_layers:
        return nn.ModuleList(Block(config, causal) for _ in range(config.n_layer))
    distinct = [Block(config, causal) for _ in range(config.share_layers)]
    return nn.ModuleList(distinct[layer * config.share_layers // config.n_layer] for layer in range(config.n_layer))


def distinct_modules(modules) -> list[nn.Module]:
    """``modules`` without repeats (a shared block once), in order: what hooks and FSDP take."""
    return list({id(module): module for module in modules}.values())


# -- initialization --------------------------------------------------------------------------------

def init_transformer_weights(model: nn.Module, blocks: nn.ModuleList) -> None:
    """GPT-2 initialization: N(0, 0.02) weights, zero biases, unit norms, and the projections that write
    into the residual stream scaled by 1/sqrt(2 * n_layer) so its variance does not grow with depth."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    residual_std = INIT_STD / math.sqrt(2 * len(blocks))
    for block in distinct_modules(blocks):
        nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=residual_std)
        nn.init.normal_(block.mlp.down.weight, mean=0.0, std=residual_std)


# -- pooling ---------------------------------------------------------------------------------------

def pool_states(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str,
                pooler: nn.Module | None = None) -> torch.Tensor:
    """One vector (B, C) of hidden states (B, T, C): the first position's ("cls", through BERT's ``pooler``,
    tanh(dense), when given), the last real one's ("last"), or the mean over real tokens ("mean").
    attention_mask (B, T) bool, True = real token, right padding; None = no padding."""
    if attention_mask is None:
        attention_mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    if pooling == "cls":
        return hidden[:, 0] if pooler is None else torch.tanh(pooler(hidden[:, 0]))  # (B, C)
    if pooling == "last":
        last = attention_mask.sum(dim=1) - 1  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
    if pooling != "mean":
        raise ValueError(f"unknown pooling {pooling!r}")
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, C)
