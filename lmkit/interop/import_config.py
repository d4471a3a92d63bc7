"""Configuration of ``lmkit import``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.config import option


@dataclass(kw_only=True)
class ImportConfig:
    source: str = option(help="A local Hugging Face model directory (config.json, model.safetensors, tokenizer "
                         "files), or a tokenizer directory alone.", positional=True, affects_output=False)
    out: str = option(help="Output checkpoint directory (an artifact; its tokenizer goes in OUT/tokenizer), or a "
                      "tokenizer artifact when SOURCE holds only a tokenizer.", short="-o", affects_output=False)
    check: bool = option(True, "Load SOURCE with transformers too and compare its outputs with lmkit's before "
                         "committing; a mismatch refuses the import.", affects_output=False)
    trust_pickle: bool = option(False, "Read pickled weights (pytorch_model.bin) when there are no safetensors, with "
                                "torch.load(weights_only=True), which runs no code from the file.")
    chat_template: str | None = option(None, "A Jinja chat template file to render conversations with instead of "
                                       "the model's own (tokenizer_config.json's chat_template); stored in the "
                                       "checkpoint, which becomes a chat model (lmkit chat, serve's "
                                       "/v1/chat/completions).", affects_output=False)  # by content
    force: bool = option(False, "Replace a different artifact already in --out.", affects_output=False)
