"""Extractive question answering's inputs (Devlin et al. 2019, section 4.2, on SQuAD v1.1): the overlapping
windows a long context is read in, the question repeated in each, and where an answer's tokens lie in them.

An input is ``[CLS] question [SEP] piece of the context [SEP]`` (framing.pair_row, segment ids 0 then 1).
A context longer than one window is read as windows starting every ``stride`` tokens, the question repeated
in each (BERT's doc_stride; transformers' run_qa). Training points a window that does not hold the whole
answer at [CLS] (SQuAD v1, as run_qa).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import torch

from lmkit.data.framing import pad_rows, pair_room, pair_row, second_start, window_starts
from lmkit.vocab import Specials

MAX_ANSWER_TOKENS = 30  # BERT's and run_qa's max_answer_length


@dataclass(frozen=True)
class QASettings:
    """How a span model reads and answers, fixed by finetuning and recorded in its checkpoint (model.json "qa")."""

    max_len: int                                # tokens of a window, [CLS] and [SEP]s included
    stride: int = 0                             # tokens between window starts; 0: half a window's context room
    max_answer_tokens: int = MAX_ANSWER_TOKENS  # the longest answer, in tokens

    def to_head(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_head(cls, head: dict) -> "QASettings":
        """The settings of a checkpoint's "qa" entry; ValueError when it is not one."""
        values = {f.name: head[f.name] for f in dataclasses.fields(cls) if f.name in head}
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values.values()):
            raise ValueError("'qa' needs integer max_len, stride and max_answer_tokens")
        settings = cls(**values)
        if settings.max_len < 8 or settings.stride < 0 or settings.max_answer_tokens < 1:
            raise ValueError("'qa' needs max_len >= 8, stride >= 0 and max_answer_tokens >= 1")
        return settings


def question_room(max_len: int) -> int:
    """Question tokens a window keeps (the rest is cut): half of what a pair holds, so that every window has
    room for at least as much context."""
    return pair_room("bert", max_len) // 2


def context_room(max_len: int) -> int:
    """The fewest context tokens a window holds (with the longest question): the largest stride that skips
    no context."""
    return pair_room("bert", max_len) - question_room(max_len)


@dataclass(frozen=True)
class Window:
    """One model input: a question with one piece of its context."""

    example: int            # the index of the question (and context) it reads
    ids: list[int]          # [CLS] question [SEP] piece [SEP]
    types: list[int]        # segment ids: 0 up to the first [SEP], 1 after
    context_start: int      # the row position of the piece's first token
    first: int              # the index of that token among the context's tokens
    length: int             # context tokens in the window
    start: int = 0          # training: the row positions of the answer's first and last token; 0 ([CLS]) when
    end: int = 0            # the window does not hold the whole answer


def make_windows(example: int, question: Sequence[int], context: Sequence[int], max_len: int, stride: int,
                 specials: Specials) -> list[Window]:
    """The windows of one question on its context's tokens; ``stride`` 0: half the window's context room."""
    question = list(question[:question_room(max_len)])
    room = pair_room("bert", max_len) - len(question)
    stride = min(stride or max(1, room // 2), room)
    begin = second_start(len(question), "bert")
    windows = []
    for first in window_starts(len(context), room, stride):
        piece = list(context[first:first + room])
        ids, types = pair_row(question, piece, "bert", specials)
        windows.append(Window(example, ids, types, begin, first, len(piece)))
    return windows


def content_spans(context: str, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each token's character span without its leading white space (a sentencepiece or byte-level BPE token
    carries the space before its word): an answer starts at its first character, not at the space."""
    trimmed = []
    for start, end in spans:
        while start < end and context[start].isspace():
            start += 1
        trimmed.append((start, end))
    return trimmed


def answer_tokens(spans: Sequence[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
    """The first and last token of the characters ``[start, end)``, given content_spans: the first token
    ending after ``start``, the last starting before ``end`` (tokens of white space alone are no answer's);
    None when no token lies in the range."""
    inside = [i for i, (a, b) in enumerate(spans) if a < b and b > start and a < end]
    return (inside[0], inside[-1]) if inside else None


def with_answer(window: Window, tokens: tuple[int, int]) -> Window:
    """The window with its training target: the answer's row positions when it holds the whole answer,
    else [CLS] (position 0)."""
    first, last = tokens
    if window.first <= first and last < window.first + window.length:
        offset = window.context_start - window.first
        return dataclasses.replace(window, start=first + offset, end=last + offset)
    return window


def format_windows(windows: Sequence[Window], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows as one right-padded batch: idx (B, T), the attention mask (B, T) and the segment ids (B, T)."""
    return pad_rows([w.ids for w in windows], [w.types for w in windows], pad)


@dataclass(frozen=True)
class EncodedQuestion:
    """A question and its context as tokens, with each context token's content span (content_spans)."""

    question: list[int]
    context: list[int]
    spans: list[tuple[int, int]]


def encode_question(tokenizer, question: str, context: str) -> EncodedQuestion:
    """``tokenizer`` (lmkit.tokenizer's, with encode_offsets) reads the question and the context as given."""
    ids, spans = tokenizer.encode_offsets(context)
    return EncodedQuestion(tokenizer.encode(question), ids, content_spans(context, spans))


def question_windows(encoded: Sequence[EncodedQuestion], settings: QASettings, specials: Specials) -> list[Window]:
    return [window for index, item in enumerate(encoded)
            for window in make_windows(index, item.question, item.context, settings.max_len, settings.stride,
                                       specials)]
