"""Configuration of ``lmkit export``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.config import option, validate

FORMATS = ("hf", "gguf")
# GGUF tensor types: 2-D weights in this type, norms, biases and position tables in f32 (llama.cpp's convention).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_DEFAULT_TYPE = "f16"


@dataclass(kw_only=True)
class ExportConfig:
    checkpoint: str = option(help="Checkpoint artifact to export (e.g. runs/gpt/final).", positional=True,
                             affects_output=False)  # its id, not its path, goes into the export's identity
    out: str = option(help="Output directory (an artifact: the target's files plus lmkit's manifest.json).",
                      short="-o", affects_output=False)
    format: str = option("hf", "Target: hf (Hugging Face transformers: a Llama-family model, its tokenizer and "
                         "generation config) or gguf (one model.gguf file for llama.cpp: weights, tokenizer and chat "
                         "template).", choices=FORMATS)
    gguf_type: str = option(GGUF_DEFAULT_TYPE, "--format gguf: the type of the 2-D weights: f32, f16, bf16 or q8_0 "
                            "(8-bit blocks of 32, llama.cpp's Q8_0); norms, biases and position tables stay f32.",
                            choices=GGUF_TYPES)
    check: bool = option(True, "Check the export before committing it: hf loads it with transformers and compares "
                         "logits and token ids with lmkit's (a mismatch refuses it); gguf reads the file back, "
                         "compares every tensor and the vocabulary, and reports how far the weights' type moves "
                         "lmkit's logits.", affects_output=False)
    force: bool = option(False, "Replace a different export already in --out.", affects_output=False)

    def __post_init__(self) -> None:
        problems = []
        if self.format not in FORMATS:
            problems.append(f"--format: unknown format {self.format!r} (choose one of {', '.join(FORMATS)})")
        if self.gguf_type not in GGUF_TYPES:
            problems.append(f"--gguf-type: unknown type {self.gguf_type!r} (choose one of {', '.join(GGUF_TYPES)})")
        elif self.format != "gguf" and self.gguf_type != GGUF_DEFAULT_TYPE:
            problems.append(f"--gguf-type: only applies to --format gguf (got --format {self.format})")
        validate(self, problems)
