"""How token lists become a model's input rows: single texts and pairs framed for an encoder or a decoder
(``[CLS] a [SEP] b [SEP]`` with segment ids, or ``a [SEP] b``), pairs cut longest first, right padding, and
long texts read as overlapping windows (chunks) whose class logits are aggregated.

Finetuning, evaluation, generation and serving frame their inputs here, so a classifier reads in use exactly
what it was trained on.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lmkit.errors import UserError
from lmkit.vocab import Specials

# Training pads a batch to one of a few widths (padded_width): a few more padded positions (masked), and far fewer
# distinct shapes from step to step, whose kernels, cached primitives and freed buffers are then reused.
PAD_MULTIPLE = 8  # the finest step between two widths


def padded_width(longest: int) -> int:
    """The width a batch whose longest row has ``longest`` positions is padded to: a multiple of 8 up to 64, beyond it
    a multiple of an eighth of the power of two at or above ``longest`` (16 up to 128, 32 up to 256, 64 up to 512):
    at most four widths per doubling, and past 64 each less than a quarter wider than its longest row. A multiple
    of 8 alone makes a new shape every 8 positions, and each leaves per-shape state in the heap (oneDNN's cached
    primitives in bf16: a few MB a width for all-MiniLM-L6-v2) that the freed memory of later batches fragments
    around: resident memory then grew all through a run (docs/finetune.md, "Speed and memory")."""
    step = max(PAD_MULTIPLE, (1 << max(int(longest) - 1, 0).bit_length()) // 8)
    return -(-longest // step) * step


def format_inputs(token_lists: list[list[int]], arch: str, max_len: int, specials: Specials,
                  bucketed: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one right-padded batch: ``[CLS] tokens [SEP]`` for an encoder, the tokens alone for a
    causal model (``</s>`` for an empty text), each cut to ``max_len`` (the beginning is kept), with the
    tokenizer's ``specials``. Returns idx (B, T) and the attention mask (B, T), True on real tokens; T is
    the longest row (``bucketed``: its :func:`padded_width`, at most ``max_len``)."""
    if arch == "bert":
        cls = specials.require("cls", "an encoder's input")
        sep = specials.require("sep", "an encoder's input")
        rows = [[cls, *tokens[:max_len - 2], sep] for tokens in token_lists]
    else:  # no </s>: in packed pretraining the position of </s> learns to forget what came before it
        rows = [list(tokens[:max_len]) or [specials.eos] for tokens in token_lists]
    idx, mask, _ = pad_rows(rows, None, specials.pad, bucketed, max_len)
    return idx, mask


def pad_rows(rows: Sequence[Sequence[int]], segments: Sequence[Sequence[int]] | None, pad: int,
             bucketed: bool = False, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of ids (and their segment ids, or None: all 0) as one right-padded batch: idx (B, T), the
    attention mask (B, T), True on real tokens, and the segment ids (B, T); T is the longest row (``bucketed``:
    rounded up to its :func:`padded_width` but not past ``limit``)."""
    longest = max(len(row) for row in rows)
    rounded = padded_width(longest) if bucketed else longest
    width = max(longest, min(rounded, limit) if limit else rounded)
    idx = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    types = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        idx[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = True
        if segments is not None:
            types[i, :len(row)] = torch.tensor(segments[i], dtype=torch.long)
    return idx, mask, types


def truncate_pair(first: Sequence[int], second: Sequence[int], room: int) -> tuple[list[int], list[int]]:
    """The pair cut to ``room`` tokens in all, one token at a time from the end of the longer text (BERT's
    and transformers' "longest_first"): a short text keeps all of itself."""
    a, b = len(first), len(second)
    while a + b > room:
        if a > b:
            a -= 1
        else:
            b -= 1
    return list(first[:a]), list(second[:b])


def pair_room(arch: str, max_len: int) -> int:
    """Text tokens a framed pair holds: an encoder's [CLS], [SEP] and [SEP] take three, a decoder's
    separator one."""
    return max(2, max_len - 3) if arch == "bert" else max(2, max_len - 1)


def pair_row(first: Sequence[int], second: Sequence[int], arch: str, specials: Specials
             ) -> tuple[list[int], list[int]]:
    """Two texts as one input row and its segment ids: ``[CLS] a [SEP] b [SEP]`` with types 0 up to the
    first [SEP] and 1 after it (BERT) for an encoder; ``a [SEP] b`` for a causal model (its tokenizer's
    [SEP], or </s> where it has none), all type 0 (a decoder has no segment embeddings). Not cut: see
    :func:`truncate_pair`."""
    if arch == "bert":
        cls = specials.require("cls", "an encoder's input")
        sep = specials.require("sep", "an encoder's input")
        row = [cls, *first, sep, *second, sep]
        return row, [0] * (len(first) + 2) + [1] * (len(second) + 1)
    sep = specials.sep if specials.sep is not None else specials.eos
    row = [*first, sep, *second]
    return row, [0] * len(row)


def second_start(first_len: int, arch: str) -> int:
    """The position of the second text's first token in a :func:`pair_row` whose first text has
    ``first_len`` tokens."""
    return first_len + 2 if arch == "bert" else first_len + 1


def format_pair_inputs(firsts: Sequence[Sequence[int]], seconds: Sequence[Sequence[int]], arch: str, max_len: int,
                       specials: Specials, bucketed: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of token lists as one right-padded batch (:func:`pair_row`), each pair cut to ``max_len`` longest
    first. Returns idx (B, T), the attention mask (B, T), True on real tokens, and the segment ids (B, T)."""
    rows = [pair_row(*truncate_pair(a, b, pair_room(arch, max_len)), arch, specials)
            for a, b in zip(firsts, seconds)]
    return pad_rows([row for row, _ in rows], [segments for _, segments in rows], specials.pad, bucketed, max_len)


def format_examples(firsts: Sequence[Sequence[int]], seconds: Sequence[Sequence[int]] | None, arch: str,
                    max_len: int, specials: Specials, bucketed: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A classifier's input batch: single texts (``seconds`` None: :func:`format_inputs`, no segment ids) or
    pairs (:func:`format_pair_inputs`), padded to the longest row (``bucketed``: to its :func:`padded_width`).
    Returns idx, the attention mask and the segment ids or None."""
    if seconds is None:
        return (*format_inputs(firsts, arch, max_len, specials, bucketed), None)
    return format_pair_inputs(firsts, seconds, arch, max_len, specials, bucketed)


def pair_uncut(first_len: int, second_len: int, arch: str, max_len: int) -> bool:
    """Whether a pair of these lengths fits a window of ``max_len`` without cutting."""
    return first_len + second_len <= pair_room(arch, max_len)


# -- long texts: overlapping chunks ------------------------------------------------------------------------
# A text longer than the window is read as overlapping windows (chunks) of it, each framed and classified as
# a text of its own, and the chunks' class logits are aggregated: their mean, or per class their max; or
# ("cut", finetuning's default, as measured by benchmarks/long_text.py) its beginning alone. The stride
# defaults to half a window.
LONG_TEXT = ("mean", "max", "cut")
# Finetuning trains on at most this many windows of one text, evenly spread from its first to its last: a
# book-length text would otherwise fill an epoch with its own windows. Evaluation reads every window.
TRAIN_CHUNKS_PER_TEXT = 8


def text_room(arch: str, max_len: int) -> int:
    """Text tokens one window holds (an encoder's [CLS] and [SEP] take two)."""
    return max(1, max_len - 2) if arch == "bert" else max_len


def default_stride(room: int) -> int:
    return max(1, room // 2)


def chunk_text(tokens: list[int], room: int, stride: int) -> list[list[int]]:
    """Windows of ``room`` tokens starting every ``stride`` tokens; the last ends at the text's end, so every
    token is read. A text that fits is one chunk."""
    return [list(tokens[start:start + room]) for start in window_starts(len(tokens), room, stride)]


def window_starts(n_tokens: int, room: int, stride: int) -> list[int]:
    """Where windows of ``room`` tokens start in a text of ``n_tokens``: every ``stride`` tokens, the last ending at
    the text's end, so every token is read (a long text's chunks; a QA context's windows)."""
    if n_tokens <= room:
        return [0]
    return list(range(0, n_tokens - room, stride)) + [n_tokens - room]


def chunk_texts(token_lists: Sequence[Sequence[int]], arch: str, max_len: int, long_text: str,
                stride: int | None = None, max_chunks: int = 0) -> tuple[list[list[int]], np.ndarray]:
    """The chunks of every text (``long_text`` cut: the text itself, cut later by format_inputs) and, for
    each chunk, the index of its text; with ``max_chunks``, at most that many of a text's chunks, evenly
    spread (the first and the last included)."""
    if long_text not in LONG_TEXT:
        raise ValueError(f"unknown long-text handling {long_text!r} (choose one of {', '.join(LONG_TEXT)})")
    room = text_room(arch, max_len)
    stride = stride or default_stride(room)
    chunks: list[list[int]] = []
    owner: list[int] = []
    for index, tokens in enumerate(token_lists):
        pieces = [list(tokens)] if long_text == "cut" else chunk_text(list(tokens), room, stride)
        if max_chunks and len(pieces) > max_chunks:
            pieces = [pieces[i] for i in np.unique(np.linspace(0, len(pieces) - 1, max_chunks).round().astype(int))]
        chunks += pieces
        owner += [index] * len(pieces)
    return chunks, np.asarray(owner, dtype=np.int64)


def long_text_settings(head: dict | None, arch: str, max_len: int, requested: str = "auto", stride: int = 0,
                       pairs: bool = False) -> tuple[str, int | None]:
    """(long_text, stride) for a classifier whose checkpoint ``head`` records how it was finetuned: ``requested``
    (auto: the head's, or cut, what a classifier that recorded none was trained with) and ``stride`` (0: the
    head's, or half a window). A stride longer than a window would skip text: refused. Pairs (``pairs``, or a
    head that reads them) are always cut, longest text first: chunking them is refused."""
    saved = (head or {}).get("long_text")
    long_text = saved or "cut" if requested == "auto" else requested
    if long_text not in LONG_TEXT:
        raise UserError(f"--long-text {requested}: choose auto, {', '.join(LONG_TEXT)}")
    if long_text != "cut" and (pairs or (head or {}).get("pairs")):
        raise UserError(f"--long-text {long_text}: reads one long text as windows; a pair of texts is cut to the "
                        "window longest text first (use --long-text cut)")
    stride = stride or (head or {}).get("chunk_stride") or 0
    room = text_room(arch, max_len)
    if stride < 0 or stride > room:
        raise UserError(f"--chunk-stride {stride}: must be between 1 and the {room} text tokens of a window "
                        "(a longer stride would skip text)")
    return long_text, (stride or None)


def aggregate_logits(logits: torch.Tensor, owner: np.ndarray, n_texts: int, long_text: str) -> torch.Tensor:
    """Per text (n_texts, K): the mean (mean, cut) or per-class max (max) of its chunks' logits (M, K)."""
    index = torch.as_tensor(owner, device=logits.device)
    if long_text == "max":
        out = torch.full((n_texts, logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        return out.scatter_reduce(0, index[:, None].expand_as(logits), logits, reduce="amax")
    total = torch.zeros((n_texts, logits.shape[1]), dtype=logits.dtype,
                        device=logits.device).index_add_(0, index, logits)
    counts = torch.bincount(index, minlength=n_texts).clamp(min=1).to(logits.dtype)
    return total / counts[:, None]
