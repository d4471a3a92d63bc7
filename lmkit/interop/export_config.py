"""Configuration of ``lmkit export``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.config import option, validate

FORMATS = ("hf",)


@dataclass(kw_only=True)
class ExportConfig:
    checkpoint: str = option(help="Checkpoint artifact to export (e.g. runs/gpt/final).", positional=True,
                             affects_output=False)  # its id, not its path, goes into the export's identity
    out: str = option(help="Output directory (an artifact: the target's files plus lmkit's manifest.json).",
                      short="-o", affects_output=False)
    format: str = option("hf", "Target: hf (Hugging Face transformers: a Llama-family model, its tokenizer and "
                         "generation config).", choices=FORMATS)
    check: bool = option(True, "Load the export with the target library and compare its logits and token ids "
                         "with lmkit's before committing it; a mismatch refuses the export.", affects_output=False)
    force: bool = option(False, "Replace a different export already in --out.", affects_output=False)

    def __post_init__(self) -> None:
        problems = []
        if self.format not in FORMATS:
            problems.append(f"--format: unknown format {self.format!r} (choose one of {', '.join(FORMATS)})")
        validate(self, problems)
