"""A checkpoint's tokenizer as llama.cpp's GGUF vocabulary: the token list, its types and scores or merges, the
special ids and how a prompt is framed.

llama.cpp tokenizes with its own code, so the vocabulary is written in one of the two forms it implements:

- ``llama`` (SentencePiece): lmkit's own tokenizers (tokenizer.model) and imported SentencePiece-style BPE
  (tokenizer.json with byte fallback and the ``▁`` space marker: Llama 1/2, Mistral, TinyLlama). Pieces with their
  scores and types (normal, unknown, control, byte, user-defined); llama.cpp merges adjacent pieces by score as
  SentencePiece's BPE does. An imported tokenizer.json has merges instead of scores: a piece scores minus the rank of
  the merge that makes it, so that the highest score is the merge transformers applies first.
- ``gpt2`` (byte-level BPE): imported GPT-2, Llama 3 and Qwen2 tokenizers. Tokens and merges as in tokenizer.json,
  and ``tokenizer.ggml.pre``, the name of llama.cpp's pre-tokenizer regex, found by comparing tokenizer.json's
  pre-tokenizer with the three llama.cpp implements for these families (gpt-2, llama-bpe, qwen2).

Anything else (WordPiece, Unigram tokenizer.json, another pre-tokenizer) is refused by name. The token list has
the model's vocabulary size: rows of the embedding no token names (Qwen pads its matrix) are ``[PAD{id}]``, unused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from lmkit import artifacts
from lmkit.checkpoint import Checkpoint
from lmkit.errors import UserError
from lmkit.generation.prompts import PromptFormat
from lmkit.tokenizer import HF_FILE, HFTokenizer, Tokenizer
from lmkit.tokenizer import load as load_tokenizer

# gguf.TokenType's values (llama.cpp's llama_token_type), named here so that the reader of this file needs no gguf.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# The pre-tokenizer regexes of tokenizer.json (as the families publish them) and llama.cpp's name for each.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENIZERS = {
    GPT2_REGEX: "gpt-2",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)"
    r"|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


@dataclass(frozen=True)
class Framing:
    """Special ids and how llama.cpp frames a prompt, as lmkit's generate does."""

    bos: int | None        # tokenizer.ggml.bos_token_id: what llama.cpp puts first when add_bos is true
    add_bos: bool          # lmkit puts it before a plain prompt (its </s>, Llama's <s>); not for SFT or chat input
    eos: int
    unk: int | None
    pad: int | None
    end_of_turn: int | None  # a chat model's end of turn: tokenizer.ggml.eot_token_id, where llama.cpp stops too


@dataclass(frozen=True)
class Vocab:
    """A GGUF vocabulary: ``tokenizer.ggml.*``."""

    model: str                    # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None    # llama: one per token
    merges: list[str] | None      # gpt2: "left right", by rank
    pre: str | None               # gpt2: llama.cpp's pre-tokenizer
    add_space_prefix: bool | None  # llama: SentencePiece's dummy prefix (a space before the text)
    framing: Framing
    caveat: str | None = None     # where llama.cpp may split a text differently (the export warns)


def framing(checkpoint: Checkpoint) -> Framing:
    """The special ids, and the start token that lmkit's ``generate`` puts before a plain prompt (PromptFormat's
    prefix: lmkit's </s>, an imported tokenizer's own framing such as Llama's <s>, nothing for GPT-2). An SFT or chat
    model's input is its template's rendering alone, so llama.cpp adds nothing there."""
    specials = checkpoint.specials
    prefix = PromptFormat(checkpoint).prefix if checkpoint.task == "lm" else []
    end = checkpoint.chat.end_of_turn if checkpoint.chat is not None else None
    return Framing(bos=prefix[0] if prefix else specials.bos, add_bos=bool(prefix), eos=specials.eos,
                   unk=specials.unk, pad=specials.pad, end_of_turn=end)


def vocab_for(checkpoint: Checkpoint) -> Vocab:
    """The checkpoint's tokenizer as a GGUF vocabulary of the model's vocabulary size; UserError when llama.cpp
    has no tokenizer that reads it as lmkit does."""
    tokenizer = load_tokenizer(checkpoint.tokenizer_path)
    size = checkpoint.model_config.vocab_size
    if isinstance(tokenizer, Tokenizer):
        vocab = _sentencepiece(tokenizer, size)
        if _is_unigram(checkpoint):
            vocab["caveat"] = ("a Unigram SentencePiece tokenizer: llama.cpp segments text by merging pieces by score "
                               "(SentencePiece's BPE rule), which may split some texts differently from lmkit")
    else:
        vocab = _tokenizer_json(checkpoint, tokenizer, size)
    return Vocab(**{**vocab, "framing": framing(checkpoint)})


def _is_unigram(checkpoint: Checkpoint) -> bool:
    """An lmkit tokenizer trained as a Unigram model (preprocess --tokenizer-type unigram)."""
    return artifacts.load(checkpoint.tokenizer_path, kind="tokenizer").config.get("type") == "unigram"


def _sentencepiece(tokenizer: Tokenizer, size: int) -> dict[str, Any]:
    sp = tokenizer.sp
    if tokenizer.vocab_size > size:
        raise UserError(f"{tokenizer.model_path}: {tokenizer.vocab_size} tokens, more than the model's vocabulary "
                        f"of {size}")
    tokens, types, scores = [], [], []
    for token_id in range(tokenizer.pieces):
        tokens.append(sp.id_to_piece(token_id))
        scores.append(float(sp.get_score(token_id)))
        types.append(BYTE if sp.is_byte(token_id) else UNKNOWN if sp.is_unknown(token_id)
                     else CONTROL if sp.is_control(token_id) else UNUSED if sp.is_unused(token_id) else NORMAL)
    for token in tokenizer.added:  # lmkit's chat tokens: special, read as tokens only in a rendered template
        tokens.append(token)
        scores.append(0.0)
        types.append(CONTROL)
    _pad(tokens, types, scores, size)
    return {"model": "llama", "tokens": tokens, "types": types, "scores": scores, "merges": None, "pre": None,
            "add_space_prefix": _dummy_prefix(tokenizer)}


def _dummy_prefix(tokenizer: Tokenizer | HFTokenizer) -> bool:
    """Whether the tokenizer puts a space (SentencePiece's ▁) before a text: asked of the tokenizer itself."""
    first = tokenizer.encode("a")[0]
    return tokenizer.id_to_piece(first).startswith("\u2581")


def _tokenizer_json(checkpoint: Checkpoint, tokenizer: HFTokenizer, size: int) -> dict[str, Any]:
    where = checkpoint.tokenizer_path / HF_FILE
    saved = json.loads(where.read_text(encoding="utf-8"))
    model = saved["model"]
    if model.get("type") != "BPE":
        raise UserError(f"{where}: a {model.get('type')} tokenizer; --format gguf writes SentencePiece-style and "
                        "byte-level BPE vocabularies, the two llama.cpp implements for Llama and GPT-2 families")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {int(entry["id"]): entry for entry in saved.get("added_tokens", [])}
    for token_id, entry in added.items():
        vocab[entry["content"]] = token_id
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in model.get("merges", [])]
    byte_level = _has(saved.get("pre_tokenizer"), "ByteLevel") or _has(saved.get("decoder"), "ByteLevel")
    if byte_level:
        pre = _pre_tokenizer(saved.get("pre_tokenizer"), where)
        kind = {"model": "gpt2", "merges": merges, "pre": pre, "scores": None, "add_space_prefix": None}
    elif model.get("byte_fallback"):
        kind = {"model": "llama", "merges": None, "pre": None, "add_space_prefix": _dummy_prefix(tokenizer)}
        if _has(saved.get("pre_tokenizer"), "Metaspace") and kind["add_space_prefix"]:
            # tokenizers' Metaspace adds no ▁ before a text that already starts with a space; SentencePiece, whose
            # rule llama.cpp follows, always adds it
            kind["caveat"] = ("a text that begins with a space gets one more \u2581 token in llama.cpp than "
                              "tokenizer.json's Metaspace gives it (llama.cpp follows SentencePiece)")
    else:
        raise UserError(f"{where}: a BPE tokenizer neither byte-level (GPT-2, Llama 3, Qwen2) nor SentencePiece-style "
                        "with byte fallback (Llama 2); llama.cpp has no tokenizer that splits text as it does")
    by_id = {token_id: token for token, token_id in vocab.items()}
    if max(by_id) >= size:
        raise UserError(f"{where}: token id {max(by_id)} is outside the model's vocabulary of {size}")
    specials = checkpoint.specials
    tokens, types = [], []
    for token_id in range(size):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(UNUSED)
            continue
        entry = added.get(token_id)
        tokens.append(token)
        if entry is not None:  # an added token: special ones (GPT-2's <|endoftext|>, Llama's <unk>) are control
            types.append(CONTROL if entry.get("special") else USER_DEFINED)
        elif token_id == specials.unk:
            types.append(UNKNOWN)
        elif kind["model"] == "llama" and _BYTE_PIECE.fullmatch(token):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    if kind["model"] == "llama":
        kind["scores"] = _merge_scores(tokens, vocab, merges)
    return {"tokens": tokens, "types": types, **kind}


def _merge_scores(tokens: list[str], vocab: dict[str, int], merges: list[str]) -> list[float]:
    """SentencePiece scores from BPE merges: a piece scores minus the rank of the first merge that makes it, so
    that llama.cpp (which merges the adjacent pair whose concatenation scores highest) merges in transformers'
    order. Pieces no merge makes (characters, bytes, specials) score below every merge."""
    scores = [-float(len(merges) + 1)] * len(tokens)
    made: set[int] = set()
    for rank, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        token_id = vocab.get(left + right)
        if token_id is not None and token_id not in made:
            made.add(token_id)
            scores[token_id] = -float(rank)
    return scores


def _has(node: Any, kind: str) -> bool:
    """Whether a tokenizer.json component (pre-tokenizer, decoder; possibly a Sequence) contains ``kind``."""
    if not isinstance(node, dict):
        return False
    if node.get("type") == kind:
        return True
    return any(_has(child, kind) for child in node.get("pretokenizers", []) + node.get("decoders", []))


def _pre_tokenizer(node: Any, where) -> str:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer: GPT-2's ByteLevel regex, or a Split on Llama 3's or
    Qwen2's regex followed by ByteLevel without its own."""
    steps = node.get("pretokenizers", []) if isinstance(node, dict) and node.get("type") == "Sequence" else [node]
    byte_level = [step for step in steps if isinstance(step, dict) and step.get("type") == "ByteLevel"]
    splits = [step for step in steps if isinstance(step, dict) and step.get("type") == "Split"]
    if len(byte_level) == 1 and byte_level[0].get("add_prefix_space"):
        raise UserError(f"{where}: its byte-level pre-tokenizer adds a space before the text (add_prefix_space), "
                        "which llama.cpp's byte-level BPE does not")
    if len(steps) == 1 and byte_level and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(steps) == 2 and len(splits) == 1 and byte_level and not byte_level[0].get("use_regex", True):
        regex = (splits[0].get("pattern") or {}).get("Regex")
        if regex in PRE_TOKENIZERS and splits[0].get("behavior") == "Isolated" and not splits[0].get("invert"):
            return PRE_TOKENIZERS[regex]
    raise UserError(f"{where}: its pre-tokenizer ({json.dumps(node)[:120]}) is none of those llama.cpp implements "
                    "for byte-level BPE here (GPT-2's, Llama 3's, Qwen2's)")


def _pad(tokens: list[str], types: list[int], scores: list[float], size: int) -> None:
    """Embedding rows past the tokenizer's vocabulary: named, unused, never produced."""
    for token_id in range(len(tokens), size):
        tokens.append(f"[PAD{token_id}]")
        types.append(UNUSED)
        scores.append(-1e9)
