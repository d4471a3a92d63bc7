"""BERT: a bidirectional transformer encoder with a masked-language-model head (Devlin et al. 2019).

It shares the decoder's blocks (layers.py) with causal masking off. Two families, by ModelConfig
settings: the classic BERT of the paper (post-norm LayerNorm, a LayerNorm after the embeddings,
learned absolute positions, token-type embeddings, exact GELU, biases, the dense-GELU-LayerNorm MLM
transform and the [CLS] pooler; the ``bert-*`` presets, and what ``lmkit import`` reads from
``BertForMaskedLM``), and lmkit's modern encoder (pre-norm RMSNorm, rotary positions, no biases;
the ``encoder-*`` presets), whose attention depends on relative offsets only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.config import ModelConfig
from lmkit.models.layers import (
    AllowedKeys,
    Embeddings,
    init_transformer_weights,
    make_blocks,
    make_norm,
    pool_states,
    rope_tables,
)
from lmkit.models.loss import linear_cross_entropy, token_loss
from lmkit.vocab import IGNORE_INDEX

POOLING = ("cls", "mean")


class MLMHead(nn.Module):
    """The transform before the vocabulary projection: dense, GELU, norm (as in BERT)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        # (--embedding-dim: into the embedding width, as ALBERT's MLM head)
        self.dense = nn.Linear(config.d_model, config.embedding_width, bias=config.bias)
        self.norm = make_norm(config, config.embedding_width)
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x), approximate=self.approximate))  # (B, T, C)


class BERT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.embedding_width)
        self.embeddings = Embeddings(config)
        self.blocks = make_blocks(config, causal=False)
        self.final_norm = nn.Identity() if config.post_norm else make_norm(config, config.d_model)
        self.mlm_head = MLMHead(config)
        # BERT's pooler (dense + tanh over [CLS]) for a classifier head: present with --pooler (an imported
        # BertModel, a classic BERT classifier); masked-LM training does not use it.
        self.pooler = nn.Linear(config.d_model, config.d_model) if config.pooler else None
        # Next-sentence / sentence-order prediction over the pooled [CLS] (BERT's cls.seq_relationship): 0 = the
        # pair as it stands in the text, 1 = not (a random second segment, or the two swapped).
        self.sentence_head = nn.Linear(config.d_model, 2) if config.sentence_head else None
        # The decoder has a per-token bias, as in BERT; its weight is the embedding matrix when tied.
        self.lm_head = nn.Linear(config.embedding_width, config.vocab_size, bias=True)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(config.head_dim, config.block_size, config.rope_theta, config)
        self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hd/2)
        self.register_buffer("rope_sin", sin, persistent=False)  # (block_size, hd/2)
        init_transformer_weights(self, self.blocks)

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_types: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual vectors (B, T, C) of idx (B, T); attention_mask (B, T) bool, True = real token:
        no position attends to padding, so padded ids cannot change the real positions' vectors.
        Each row needs at least one real token (a row of padding only has nothing to attend to: NaN).
        token_types (B, T): segment ids (0 = sentence A) for a model with --type-vocab-size; None = all 0."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hd/2)
        x = self.embeddings(self.tok_emb(idx), torch.arange(T, device=idx.device), token_types)  # (B, T, C)
        # Every query sees the same (real) keys: one (B, 1, 1, T) mask for all layers.
        mask = None if attention_mask is None else AllowedKeys(attention_mask[:, None, None, :])
        for block in self.blocks:
            x = block(x, cos, sin, mask)  # (B, T, C)
        return self.final_norm(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, return_logits: bool = True,
                token_types: torch.Tensor | None = None, sentence_targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, V) at every position and the cross entropy over targets that are not -100.
        With targets and ``return_logits=False`` (training), no logits (None): the head and the loss
        then run on the masked positions alone (loss.linear_cross_entropy).

        Sentence-pair pretraining (a model with --sentence-head): with ``sentence_targets`` (B,), the first
        value is (token logits or None, sentence logits (B, 2)) and the loss is the masked-LM loss plus the
        sentence task's cross entropy, as BERT's and ALBERT's pretraining losses."""
        hidden = self.encode(idx, attention_mask, token_types)  # (B, T, C)
        if targets is not None and not return_logits:
            chosen = targets != IGNORE_INDEX
            logits = None
            loss = linear_cross_entropy(self.mlm_head(hidden[chosen]), self.lm_head.weight, self.lm_head.bias,
                                        targets[chosen])
        else:
            logits = self.lm_head(self.mlm_head(hidden))  # (B, T, V)
            loss = None if targets is None else token_loss(logits, targets)
        if sentence_targets is None:
            return logits, loss
        sentence_logits = self.sentence_logits(hidden)  # (B, 2)
        sentence_loss = F.cross_entropy(sentence_logits.float(), sentence_targets)
        return (logits, sentence_logits), sentence_loss if loss is None else loss + sentence_loss

    def sentence_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The sentence-pair head's logits (B, 2) over the pooled [CLS] of hidden states (B, T, C)."""
        if self.sentence_head is None:
            raise ValueError("this model has no sentence-pair head (--sentence-head)")
        return self.sentence_head(torch.tanh(self.pooler(hidden[:, 0])))

    def pooled(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               method: str = "cls") -> torch.Tensor:
        """One vector (B, C) per sequence: the first ([CLS]) position's, or the mean over real tokens."""
        if method not in POOLING:
            raise ValueError(f"unknown pooling {method!r} (choose one of {', '.join(POOLING)})")
        return pool_states(self.encode(idx, attention_mask), attention_mask, method)  # (B, C)
