"""Model architectures (GPT decoder, BERT encoder, LSTM), their config and presets, and size accounting.

``build_model(config)`` is the one way to make a model: an explicit registry from ``config.arch``.
"""

from __future__ import annotations

import torch
from torch import nn

from lmkit.models.bert import BERT
from lmkit.models.config import ARCHS, ModelConfig
from lmkit.models.gpt import GPT
from lmkit.models.layers import distinct_modules
from lmkit.models.lstm import LSTMLanguageModel
from lmkit.models.presets import PRESETS, model_config, register_preset
from lmkit.vocab import IGNORE_INDEX

MODELS: dict[str, type[nn.Module]] = {"gpt": GPT, "bert": BERT, "lstm": LSTMLanguageModel}
CAUSAL_ARCHS = frozenset({"gpt", "lstm"})  # trained on next-token prediction (clm)
MASKED_ARCHS = frozenset({"bert"})  # trained on masked-token prediction (mlm)

__all__ = ["ARCHS", "BERT", "CAUSAL_ARCHS", "GPT", "IGNORE_INDEX", "LSTMLanguageModel", "MASKED_ARCHS",
           "MODELS", "ModelConfig", "PRESETS", "build_model", "count_parameters", "flops_per_token",
           "model_config", "register_preset"]


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialized model for ``config`` (on the current default device and dtype)."""
    return MODELS[config.arch](config)


def count_parameters(model: nn.Module, trainable_only: bool = False, *, non_embedding: bool = False) -> int:
    """Number of parameters, a tied matrix counted once. ``non_embedding`` leaves out the embedding tables
    (tokens, learned positions, token types) and the output projection, as Kaplan et al. 2020 count N."""
    skipped = set()
    if non_embedding:  # token, position and token-type tables, and the output projection
        tables = [model.tok_emb, model.lm_head, getattr(getattr(model, "embeddings", None), "pos_emb", None),
                  getattr(getattr(model, "embeddings", None), "type_emb", None)]
        skipped = {id(p) for module in tables if module is not None for p in module.parameters()}
    return sum(p.numel() for p in model.parameters()
               if id(p) not in skipped and (p.requires_grad or not trainable_only))


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward and backward) per token at ``seq_len``.

    Transformers: 6 * N_non_embedding + 12 * n_layer * d_model * seq_len, the parameter matmuls plus
    attention scores and weighted values (Kaplan et al. 2020, table 1; PaLM, Chowdhery et al. 2022,
    appendix B); like them it leaves out the output projection and causal masking. LSTM: 6 * N, all
    parameters, since every one (the output matrix too) is a multiply-add per token.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    with torch.device("meta"):  # shapes only: no memory, no initialization cost
        model = build_model(config)
    if config.arch == "lstm":
        return 6.0 * count_parameters(model)
    width = config.n_head * config.head_dim  # d_model unless --head-size decouples them
    # A shared block (--share-layers) computes once per layer that uses it, though its parameters count once.
    reused = sum(p.numel() for block in model.blocks for p in block.parameters()) - sum(
        p.numel() for block in distinct_modules(model.blocks) for p in block.parameters())
    return 6.0 * (count_parameters(model, non_embedding=True) + reused) + 12.0 * config.n_layer * width * seq_len
