"""Fill-mask with a masked language model (BERT): the most likely tokens for each ``[MASK]`` in a text.

``[MASK]`` is a control symbol, never matched in text, so a text is split at the literal "[MASK]", each
piece encoded, and the mask id put between them. The model saw masked *tokens*, and a word token
carries its leading space ("▁capital"), so one space before a [MASK] goes into the mask; the pieces
after a mask are encoded without SentencePiece's dummy leading space (behind a newline, which lmkit's
line-trained tokenizers only ever spell as a byte piece, then dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmkit.errors import UserError
from lmkit.tokenizer import Tokenizer

MASK = "[MASK]"


@dataclass
class Candidate:
    token: str          # the token as text (without its leading space; its piece when that is blank)
    id: int
    probability: float  # from the softmax over the whole vocabulary
    text: str           # the input with this [MASK] replaced by the token

    def to_dict(self) -> dict:
        return {"token": self.token, "id": self.id, "probability": self.probability, "text": self.text}


def _encode_continuation(tokenizer: Tokenizer, text: str) -> list[int]:
    """``text`` encoded as it would be in the middle of a line: no dummy leading space (SentencePiece's;
    an imported tokenizer, e.g. WordPiece, splits at whitespace and needs no such care)."""
    if not isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text)
    newline = tokenizer.sp.piece_to_id("<0x0A>")
    ids = tokenizer.encode("\n" + text)
    return ids[ids.index(newline) + 1:]


def mask_segments(text: str) -> list[str]:
    """The text around each [MASK], one space before a mask moved into it; refuses a text without one."""
    segments = text.split(MASK)
    if len(segments) < 2:
        raise ValueError(f"no {MASK} in the text (write {MASK} where a token is to be predicted)")
    return [s[:-1] if i < len(segments) - 1 and s.endswith(" ") else s for i, s in enumerate(segments)]


def encode_masked(tokenizer: Tokenizer, text: str) -> list[int]:
    """``[CLS] text [SEP]`` with the mask id at each [MASK]."""
    segments, specials = mask_segments(text), tokenizer.specials
    mask = specials.require("mask", "fill-mask")
    ids = [specials.require("cls", "fill-mask"), *tokenizer.encode(segments[0])]
    for segment in segments[1:]:
        ids.append(mask)
        ids.extend(_encode_continuation(tokenizer, segment) if segment else [])
    return [*ids, specials.require("sep", "fill-mask")]


def _token_text(tokenizer: Tokenizer, token_id: int) -> str:
    """The token as it reads inside a text: with its leading space."""
    return (" " if tokenizer.id_to_piece(token_id).startswith("▁") else "") + tokenizer.decode([token_id])


def _filled(tokenizer, ids: list[int], position: int, token: int, before: str, after: str) -> str:
    """The text with this [MASK] replaced by ``token``: the original text around it for lmkit's
    SentencePiece models; an imported tokenizer's own decoding of the ids (WordPiece joins "##" pieces,
    an uncased BERT lowercases), the other masks left as [MASK]."""
    if isinstance(tokenizer, Tokenizer):
        return before + _token_text(tokenizer, token) + after
    return tokenizer.decode([token if p == position else t for p, t in enumerate(ids)][1:-1])


def _token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """The token as a candidate is shown: its text, or its piece when that text is blank ("▁", a space)."""
    text = tokenizer.decode([token_id])
    return text if text.strip() else tokenizer.id_to_piece(token_id)


@torch.no_grad()
def fill_mask(model: nn.Module, tokenizer: Tokenizer, texts: list[str], top_k: int = 5, batch_size: int = 8,
              names: list[str] | None = None) -> list[list[list[Candidate]]]:
    """For each text, for each of its [MASK]s in order, the ``top_k`` most likely text tokens, most likely
    first. ``names`` label the texts in messages (default "text 1", ...)."""
    names = names or [f"text {i + 1}" for i in range(len(texts))]
    block_size = model.config.block_size
    encoded = []
    for name, text in zip(names, texts):
        try:
            ids = encode_masked(tokenizer, text)
        except ValueError as exc:
            raise UserError(f"{name}: {exc}") from None
        if len(ids) > block_size:
            raise UserError(f"{name}: {len(ids)} tokens with [CLS] and [SEP], more than the model's block size "
                            f"{block_size}; shorten the text around the [MASK]")
        encoded.append(ids)
    device = model.tok_emb.weight.device
    results = []
    for start in range(0, len(texts), batch_size):
        rows = encoded[start:start + batch_size]
        width = max(len(r) for r in rows)
        idx = torch.full((len(rows), width), tokenizer.specials.pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, ids in enumerate(rows):
            idx[i, :len(ids)], attention[i, :len(ids)] = torch.tensor(ids), True
        logits, _ = model(idx.to(device), attention_mask=attention.to(device))  # (b, T, V)
        probs = torch.softmax(logits.float(), dim=-1)  # (b, T, V)
        probs[:, :, sorted(tokenizer.specials.ids)] = -1.0  # never a candidate
        for i, ids in enumerate(rows):
            text = texts[start + i]
            original, segments = text.split(MASK), mask_segments(text)
            per_mask = []
            mask_positions = [p for p, token in enumerate(ids) if token == tokenizer.specials.mask]
            for m, position in enumerate(mask_positions):
                top = torch.topk(probs[i, position], min(top_k, probs.shape[-1] - len(tokenizer.specials.ids)))
                before, after = MASK.join([*original[:m], segments[m]]), MASK.join(original[m + 1:])
                per_mask.append([
                    Candidate(_token_label(tokenizer, token), token, probability,
                              _filled(tokenizer, ids, position, token, before, after))
                    for probability, token in zip(top.values.tolist(), top.indices.tolist())])
            results.append(per_mask)
    return results
