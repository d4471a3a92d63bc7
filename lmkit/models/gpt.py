"""GPT: a decoder-only transformer language model.

Two families, by ModelConfig settings: lmkit's modern decoder (pre-norm RMSNorm, rotary positions,
SwiGLU, no biases: the Llama/Qwen/Mistral shape, grouped-query attention included) and the classic
GPT-2 (pre-norm LayerNorm, learned absolute positions, tanh-GELU, biases, tied head; the
``gpt2-*`` presets). The blocks live in layers.py, shared with the encoder; this file is the model
around them. For
generation, ``encode`` also takes a KV cache (``new_cache``) and the attention mask of a
left-padded batch, in which each row's positions start at 0 at its first real token; or, for continuous
batching, a ``SlotBatch`` of a slot cache (``new_slots``), in which each row continues its own sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.layers import (
    EXPLICIT_ATTENTION_MAX,
    AllowedKeys,
    AttentionMask,
    Embeddings,
    KVCache,
    ScoreBias,
    SlotBatch,
    SlotCache,
    attention_mask_4d,
    causal_bias,
    init_transformer_weights,
    make_blocks,
    make_norm,
    rope_tables,
)
from lmkit.models.loss import linear_cross_entropy, token_loss


def segment_positions(segments: torch.Tensor) -> torch.Tensor:
    """Each position's offset (B, T) from the start of its run of equal ``segments`` (B, T)."""
    B, T = segments.shape
    index = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return index - torch.cummax(torch.where(starts, index, 0), dim=1).values


def segment_mask(segments: torch.Tensor, explicit: bool) -> AttentionMask:
    """Block-diagonal causal attention (B, 1, T, T) over packed rows: a query sees the keys of its own segment
    at or before it. The keys it may attend to, for SDPA; or, ``explicit``, the additive bias (0 or -inf) of
    layers.explicit_attention."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    allowed = (segments[:, :, None] == segments[:, None, :]) & causal  # (B, T, T); the diagonal always
    if explicit:
        return ScoreBias(torch.zeros(allowed.shape, dtype=torch.float32, device=segments.device).masked_fill_(
            ~allowed, float("-inf"))[:, None])
    return AllowedKeys(allowed[:, None])


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.embedding_width)
        self.embeddings = Embeddings(config)
        self.blocks = make_blocks(config, causal=True)
        self.final_norm = nn.Identity() if config.post_norm else make_norm(config, config.d_model)
        # --embedding-dim: the output goes back to the embedding width before the (tied) vocabulary projection
        self.out_proj = nn.Linear(config.d_model, config.embedding_dim, bias=False) if config.embedding_dim else None
        self.lm_head = nn.Linear(config.embedding_width, config.vocab_size, bias=False)
        if config.tie_embeddings:  # one matrix to read and write tokens (Press & Wolf 2017)
            self.lm_head.weight = self.tok_emb.weight
        # Derived from the config, so not saved with the weights (non-persistent).
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta, config)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hd/2)
        length = min(config.block_size, EXPLICIT_ATTENTION_MAX)
        self.register_buffer("causal_bias", causal_bias(length), persistent=False)  # (length, length)
        init_transformer_weights(self, self.blocks)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch_size`` rows of up to ``max_len`` positions (padding included),
        in the dtype and on the device of the weights."""
        weight = self.tok_emb.weight
        return KVCache(self.config.n_layer, batch_size, self.config.kv_heads, self.config.head_dim, max_len,
                       dtype=weight.dtype, device=weight.device)

    def new_slots(self, slots: int) -> SlotCache:
        """An empty slot cache (continuous batching): ``slots`` sequences of up to block_size positions each."""
        weight = self.tok_emb.weight
        return SlotCache(self.config.n_layer, slots, self.config.kv_heads, self.config.head_dim,
                         self.config.block_size, dtype=weight.dtype, device=weight.device)

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               cache: KVCache | SlotBatch | None = None, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, T, C) of idx (B, T): what the output projection and a
        classification head read. Causal: position t sees positions <= t only, so padding placed
        after the real tokens cannot change them.

        Generation: ``cache`` holds the keys and values of earlier positions (idx continues them) and
        is extended in place; ``attention_mask`` (B, S) bool, True = real token, covers the cached
        positions and idx's (S = cache length + T). Padding (before a row's first real token) is
        never attended to, and rotary positions count real tokens only, so a left-padded row gives
        the same states as the row alone.

        Packed rows (training): ``segments`` (B, T) gives each position the index of the sequence it
        belongs to; a position attends only to earlier positions of its own sequence, and positions restart
        at 0 with each sequence, so every sequence gets the states it would get alone.

        Continuous batching: ``cache`` is a SlotBatch, which gives each row its slot's positions and the keys it
        may attend to (attention_mask unused); the scheduler keeps each sequence within block_size.
        """
        B, T = idx.shape
        past = 0 if cache is None or isinstance(cache, SlotBatch) else cache.length
        mask: AttentionMask | None = None
        if isinstance(cache, SlotBatch):
            positions = cache.positions  # (B, T)
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hd/2)
            mask = None if cache.allowed is None else AllowedKeys(cache.allowed)  # (B, 1, T, S)
        elif segments is not None:
            if attention_mask is not None or cache is not None:
                raise ValueError("segments (packed rows) go without an attention mask or a cache")
            positions = segment_positions(segments)  # (B, T)
            if int(positions.max()) >= self.config.block_size:
                raise ValueError(f"a packed sequence of {int(positions.max()) + 1} tokens exceeds block_size "
                                 f"{self.config.block_size}")
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hd/2)
            mask = segment_mask(segments, explicit=T <= EXPLICIT_ATTENTION_MAX and idx.device.type == "cpu"
                                and torch.is_grad_enabled())  # (B, 1, T, T)
        elif attention_mask is None:
            if past + T > self.config.block_size:
                raise ValueError(f"sequence length {past + T} exceeds block_size {self.config.block_size}")
            positions = torch.arange(past, past + T, device=idx.device)  # (T,)
            cos, sin = self.rope_cos[past:past + T], self.rope_sin[past:past + T]  # (T, hd/2)
            if cache is None and T <= EXPLICIT_ATTENTION_MAX and idx.device.type == "cpu" and torch.is_grad_enabled():
                mask = ScoreBias(self.causal_bias[:T, :T])  # (T, T): training on a CPU (layers.explicit_attention)
        else:
            if attention_mask.shape != (B, past + T):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + T)}")
            positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)[:, past:]  # (B, T)
            # (Compiled, the check would split the graph on a value read back: the decoder checks lengths first.)
            if not torch.compiler.is_compiling() and int(positions.max()) >= self.config.block_size:
                raise ValueError(f"sequence length {int(positions.max()) + 1} exceeds block_size "
                                 f"{self.config.block_size}")
            cos, sin = self.rope_cos[positions].unsqueeze(1), self.rope_sin[positions].unsqueeze(1)  # (B, 1, T, hd/2)
            mask = AllowedKeys(attention_mask_4d(attention_mask, T, causal=True))  # (B, 1, T, S), built once
        x = self.embeddings(self.tok_emb(idx), positions)  # (B, T, C)
        for index, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, None if cache is None else cache.layers[index])  # (B, T, C)
        return self.final_norm(x)  # (B, T, C)

    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the vocabulary projection reads: encode()'s states, in the embedding width (--embedding-dim)."""
        return hidden if self.out_proj is None else self.out_proj(hidden)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, return_logits: bool = True,
                segments: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids; targets (B, T) next-token ids or -100. Returns logits (B, T, V) and the
        mean cross entropy over targets that are not -100 (None without targets). Training passes
        ``return_logits=False``: the loss then never materializes the logits (loss.py), which are None.
        segments (B, T): packed rows of several sequences (encode)."""
        hidden = self.head_input(self.encode(idx, segments=segments))  # (B, T, C or E)
        if targets is not None and not return_logits:
            return None, linear_cross_entropy(hidden, self.lm_head.weight, None, targets)
        logits = self.lm_head(hidden)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = token_loss(logits, targets)
        return logits, loss
