"""Tiny model configs: big enough to exercise every code path, small enough for two CPU cores."""

from lmkit.models import ModelConfig

VOCAB = 128


def tiny_config(arch: str, **overrides) -> ModelConfig:
    fields = {"arch": arch, "vocab_size": VOCAB, "block_size": 32, "n_layer": 2, "d_model": 32}
    if arch != "lstm":
        fields.update(n_head=4, mlp="gelu" if arch == "bert" else "swiglu")
    return ModelConfig(**{**fields, **overrides})
