"""Token ids that every stage agrees on: lmkit's special tokens at fixed ids, and the target
value that no loss counts. Declared here once; the tokenizer, packing, models, generation,
evaluation and export import them from this module.
"""

from __future__ import annotations

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
