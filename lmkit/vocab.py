"""Token ids that every stage agrees on: the special tokens of a vocabulary, and the target value
that no loss counts. Declared here once; the tokenizer, packing, models, generation, evaluation,
serving and interop import them from this module.

A tokenizer lmkit trains has its seven special tokens at the fixed ids 0..6 (``LMKIT``). A tokenizer
imported from Hugging Face keeps its own (GPT-2's ``<|endoftext|>`` is 50256, BERT's ``[CLS]`` 101),
so every stage reads the ids from the tokenizer's :class:`Specials`, never from a constant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any

from lmkit.errors import UserError

SPECIAL_TOKENS: dict[str, tuple[str, int]] = {
    "pad": ("<pad>", 0),
    "unk": ("<unk>", 1),
    "bos": ("<s>", 2),
    "eos": ("</s>", 3),
    "mask": ("[MASK]", 4),
    "cls": ("[CLS]", 5),
    "sep": ("[SEP]", 6),
}
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID, CLS_ID, SEP_ID = (token_id for _, token_id in SPECIAL_TOKENS.values())
FIRST_TEXT_ID = len(SPECIAL_TOKENS)  # ids below this are special tokens

IGNORE_INDEX = -100  # targets with this value do not count in a loss (padding, prompts, unmasked tokens)


@dataclass(frozen=True)
class Specials:
    """The special token ids of one vocabulary; None where it has no such token.

    ``eos`` ends a document (packing puts it between documents, generation stops at it); ``start`` is
    prepended to a text a causal model reads (lmkit and GPT-2: the end-of-text token, the one before
    every packed document; Llama: ``<s>``); ``pad`` fills batches and is never attended to (GPT-2 has
    none and pads with ``eos``); ``mask``, ``cls`` and ``sep`` are an encoder's.
    """

    pad: int
    eos: int
    start: int | None = None
    unk: int | None = None
    bos: int | None = None
    mask: int | None = None
    cls: int | None = None
    sep: int | None = None
    # Ids of every other special or control token (added tokens such as Qwen's <|im_start|>):
    # never masked, never generated, never a fill-mask candidate.
    others: tuple[int, ...] = ()

    @cached_property  # read per training batch (MLM masking): computed once
    def ids(self) -> frozenset[int]:
        """Every special id: tokens that are not text."""
        named = (getattr(self, f.name) for f in fields(self) if f.name != "others")
        return frozenset(i for i in (*named, *self.others) if i is not None)

    @cached_property
    def never_generated(self) -> tuple[int, ...]:
        """Special ids sampling must never pick: all of them but ``eos`` (which ends a reply)."""
        return tuple(sorted(self.ids - {self.eos}))

    def require(self, name: str, what: str) -> int:
        """The id of ``name`` (mask, cls, sep ...); a vocabulary without it cannot do ``what``."""
        value = getattr(self, name)
        if value is None:
            raise UserError(f"the tokenizer has no {name} token, which {what} needs")
        return value

    @cached_property
    def text_start(self) -> int:
        """The lowest id a random text token may take: past the specials when they are the first ids (lmkit's
        0..6), else 0 (an imported vocabulary's specials lie anywhere; a draw of one is then put back)."""
        ids = self.ids
        return len(ids) if ids == frozenset(range(len(ids))) else 0

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["others"] = list(self.others)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Specials:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "others" else v) for k, v in values.items() if k in known})


# lmkit's own tokenizers: the seven tokens above; a text starts after </s> as every packed document does.
LMKIT = Specials(pad=PAD_ID, eos=EOS_ID, start=EOS_ID, unk=UNK_ID, bos=BOS_ID, mask=MASK_ID, cls=CLS_ID,
                 sep=SEP_ID)
