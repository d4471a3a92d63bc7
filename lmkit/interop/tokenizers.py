"""Hugging Face tokenizers as lmkit tokenizer artifacts: ``tokenizer.json`` plus the special ids.

transformers reads the directory (a fast tokenizer's ``tokenizer.json``, or a SentencePiece
``tokenizer.model`` that it converts, as for Llama-family models) and tells which tokens are special;
lmkit keeps the tokenizer itself as ``tokenizer.json`` for the ``tokenizers`` package and the ids in
``specials.json`` (``lmkit.vocab.Specials``). The model's own special tokens and ids are kept: GPT-2's
``<|endoftext|>`` stays 50256, BERT's ``[CLS]`` 101. Encoding adds no special tokens (the stage that
frames a model's input adds them), so lmkit's ids are transformers' with ``add_special_tokens=False``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lmkit import artifacts
from lmkit.errors import UserError
from lmkit.tokenizer import HF_FILE, SPECIALS_FILE
from lmkit.tokenizer import load as load_tokenizer
from lmkit.vocab import Specials

# Files of a Hugging Face tokenizer directory that decide how it tokenizes (hashed into the lineage).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json")
# Files that decide how an imported model chats: its template (when not in tokenizer_config.json) and stop ids.
CHAT_FILES = ("chat_template.jinja", "chat_template.json", "generation_config.json")


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).exists() for name in ("tokenizer.json", "tokenizer.model", "vocab.txt",
                                                        "vocab.json"))


def source_files(directory: Path) -> list[Path]:
    return [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]


def read_specials(tokenizer: Any, where: str) -> Specials:
    """The special ids of a loaded transformers tokenizer."""
    def ident(name: str) -> int | None:
        value = getattr(tokenizer, f"{name}_token_id", None)
        return None if value is None else int(value)

    eos = ident("eos") if ident("eos") is not None else ident("sep")
    if eos is None:
        raise UserError(f"{where}: the tokenizer has no end-of-text token (eos_token, or sep_token for an encoder); "
                        "lmkit separates documents with it")
    bos = ident("bos")
    framed, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    prepended = framed[0] if len(framed) > len(bare) and framed[0] in tokenizer.all_special_ids else None
    # What a text follows: what transformers prepends (Llama's <s>), else bos (GPT-2's <|endoftext|>), else the
    # padding token (Qwen's <|endoftext|>, its document separator: not an instruct model's <|im_end|>), else eos.
    start = next(i for i in (prepended, bos, ident("pad"), eos) if i is not None)
    named = Specials(pad=ident("pad") if ident("pad") is not None else eos, eos=eos, start=start, unk=ident("unk"),
                     bos=bos, mask=ident("mask"), cls=ident("cls"), sep=ident("sep"))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    others = {int(i) for i in tokenizer.all_special_ids} | {int(i) for i, token in added.items()
                                                          if getattr(token, "special", False)}
    return dataclasses.replace(named, others=tuple(sorted(others - named.ids)))


def chat_template_of(source: Path, transformers: Any) -> tuple[str | None, dict[str, str]]:
    """The chat template of the Hugging Face tokenizer in ``source`` (its default one when it has several: the one
    apply_chat_template uses without tools; None when it has none) and the special-token strings transformers passes
    to it (its special_tokens_map: ``bos_token``, ``eos_token`` ...)."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    variables = {name: value for name, value in tokenizer.special_tokens_map.items() if isinstance(value, str)}
    return (template if isinstance(template, str) and template.strip() else None), variables


def tokenizer_recipe(source: Path) -> tuple[str, list[dict[str, Any]]]:
    """The recipe of a tokenizer imported from ``source`` (its files' contents) and their lineage records."""
    files = [artifacts.describe_file(path) for path in source_files(source)]
    return artifacts.make_recipe("tokenizer", {"import": "huggingface"}, files, []), files


def write_tokenizer(source: Path, out_dir: Path, transformers: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write tokenizer.json and specials.json of the Hugging Face tokenizer in ``source`` into ``out_dir``;
    returns the artifact's (config, stats)."""
    where = str(source)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as exc:  # tokenizers raises a bare Exception for a malformed tokenizer.json
        message = " ".join(str(exc).split())[:300]
        raise UserError(f"{where}: transformers cannot read its tokenizer ({message})") from None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{where}: the tokenizer has no fast (tokenizers) form; lmkit imports fast tokenizers "
                        "and SentencePiece models transformers converts")
    specials = read_specials(tokenizer, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    backend.save(str(out_dir / HF_FILE))
    (out_dir / SPECIALS_FILE).write_text(json.dumps(specials.to_dict(), indent=2) + "\n")
    loaded = load_tokenizer(out_dir)
    model = json.loads((out_dir / HF_FILE).read_text(encoding="utf-8"))["model"]["type"]
    config = {"imported_from": str(source.resolve()), "model": model, "tokenizer_class": type(tokenizer).__name__,
              "special_tokens": {name: {"piece": loaded.id_to_piece(value), "id": value}
                                 for name, value in specials.to_dict().items()
                                 if name != "others" and value is not None}}
    return config, {"vocab_size": loaded.vocab_size, "model": model, "specials": specials.to_dict()}


def import_tokenizer(source: Path, out_dir: Path, transformers: Any) -> artifacts.Artifact:
    """Seal ``out_dir`` (a new directory) as a tokenizer artifact made from the Hugging Face tokenizer in ``source``."""
    recipe, files = tokenizer_recipe(source)
    config, stats = write_tokenizer(source, out_dir, transformers)
    artifacts.seal(out_dir, "tokenizer", recipe, config, {"artifacts": [], "files": files}, stats)
    return artifacts.load(out_dir, kind="tokenizer")
