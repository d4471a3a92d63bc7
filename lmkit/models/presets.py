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


# Decoders. gpt2-124m has GPT-2 small's shape (Radford et al. 2019), with lmkit's RMSNorm and RoPE.
register_preset("gpt-tiny", arch="gpt", n_layer=2, n_head=2, d_model=64, block_size=128)
register_preset("gpt-small", arch="gpt", n_layer=6, n_head=6, d_model=384, block_size=256)
register_preset("gpt2-124m", arch="gpt", n_layer=12, n_head=12, d_model=768, block_size=1024, mlp="gelu")
# Encoders: classic BERT feed-forward (GELU, 4*d_model); bert-base has BERT-base's shape (Devlin et al. 2019).
register_preset("bert-tiny", arch="bert", n_layer=2, n_head=2, d_model=128, block_size=128, mlp="gelu")
register_preset("bert-small", arch="bert", n_layer=4, n_head=4, d_model=256, block_size=256, mlp="gelu")
register_preset("bert-base", arch="bert", n_layer=12, n_head=12, d_model=768, block_size=512, mlp="gelu")
# Recurrent baseline.
register_preset("lstm-small", arch="lstm", n_layer=2, d_model=512, block_size=256)
