"""Using a checkpoint: text generation (sampling, a KV-cache decoding loop, streaming), fill-mask,
label prediction, and int8 quantization for inference.

    from lmkit.generation import Generator, SamplingSettings
    generator = Generator(read_checkpoint("runs/gpt/final"))
    generator.generate(["The for statement"], SamplingSettings(max_new_tokens=40, temperature=0.8, top_k=50))

``SamplingSettings`` imports without torch (the CLI parses flags with it); the rest loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from lmkit.generation.settings import SamplingSettings, parse_stop

_LAZY = {
    "Generator": "lmkit.generation.generator",
    "decode": "lmkit.generation.decode",
    "fill_mask": "lmkit.generation.fill_mask",
    "classify": "lmkit.generation.classify",
    "load_model": "lmkit.generation.model",
    "quantize_int8": "lmkit.generation.quantize",
}

__all__ = ["Generator", "SamplingSettings", "classify", "decode", "fill_mask", "load_model", "parse_stop",
           "quantize_int8"]


def __getattr__(name: str) -> Any:  # PEP 562: torch loads only when these are used
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmkit.generation' has no attribute {name!r}")
