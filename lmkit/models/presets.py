"""Named model sizes: an explicit registry of ModelConfig fields, completed by a vocabulary size."""

from __future__ import annotations

import dataclasses
from typing import Any

from lmkit.config import flag_name
from lmkit.errors import ConfigError, UserError
from lmkit.models.config import ModelConfig

PRESETS: dict[str, dict[str, Any]] = {}
# A preset fixes the shape of a model; the vocabulary comes from the tokenizer it is trained with.
_PRESET_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}


def register_preset(name: str, **fields: Any) -> None:
    """Add a preset; a name registered twice or an unknown field is a bug, hence ValueError."""
    if name in PRESETS:
        raise ValueError(f"model preset {name!r} is already registered")
    unknown = sorted(set(fields) - _PRESET_FIELDS)
    if unknown:
        raise ValueError(f"model preset {name!r}: unknown ModelConfig fields {unknown}")
    if "arch" not in fields:
        raise ValueError(f"model preset {name!r}: 'arch' is required")
    PRESETS[name] = dict(fields)


def model_config(preset: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """The preset's config for ``vocab_size``, with ``overrides`` (None values are ignored) applied."""
    if preset not in PRESETS:
        raise UserError(f"--model: unknown model preset {preset!r} (choose one of {', '.join(PRESETS)})")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    unknown = [key for key in overrides if key not in _PRESET_FIELDS]
    if unknown:
        raise ConfigError([f"{flag_name(key)}: not a model setting" for key in unknown])
    return ModelConfig(**{**PRESETS[preset], "vocab_size": vocab_size, **overrides})


# The classic architectures of the papers, as settings of ModelConfig.
GPT2 = dict(arch="gpt", norm="layer", positions="learned", mlp="gelu_tanh", bias=True, norm_eps=1e-5)
# No pooler in pretraining (masked LM does not train it); a classifier adds a fresh one, as transformers does.
BERT = dict(arch="bert", norm="layer", positions="learned", mlp="gelu", bias=True, post_norm=True, type_vocab_size=2,
            norm_eps=1e-12)

# Modern decoders (Llama-style: pre-norm RMSNorm, rotary positions, SwiGLU, no biases).
register_preset("gpt-tiny", arch="gpt", n_layer=2, n_head=2, d_model=64, block_size=128)
register_preset("gpt-small", arch="gpt", n_layer=6, n_head=6, d_model=384, block_size=256)
# GPT-2 (Radford et al. 2019): gpt2-124m is GPT-2 small, exactly (exports to GPT2LMHeadModel).
register_preset("gpt2-tiny", **GPT2, n_layer=2, n_head=2, d_model=64, block_size=128)
register_preset("gpt2-124m", **GPT2, n_layer=12, n_head=12, d_model=768, block_size=1024)
# BERT (Devlin et al. 2019): bert-base is BERT-base's shape, exactly (exports to BertForMaskedLM).
register_preset("bert-tiny", **BERT, n_layer=2, n_head=2, d_model=128, block_size=128)
register_preset("bert-small", **BERT, n_layer=4, n_head=4, d_model=256, block_size=256)
register_preset("bert-base", **BERT, n_layer=12, n_head=12, d_model=768, block_size=512)
# lmkit's modern encoder: pre-norm RMSNorm, rotary positions, GELU 4x feed-forward, no biases.
register_preset("encoder-tiny", arch="bert", n_layer=2, n_head=2, d_model=128, block_size=128, mlp="gelu")
register_preset("encoder-small", arch="bert", n_layer=4, n_head=4, d_model=256, block_size=256, mlp="gelu")
register_preset("encoder-base", arch="bert", n_layer=12, n_head=12, d_model=768, block_size=512, mlp="gelu")
# Recurrent baseline.
register_preset("lstm-small", arch="lstm", n_layer=2, d_model=512, block_size=256)

