"""Extractive question answering: a pretrained encoder with a start/end head over its tokens (Devlin et al.
2019, section 4.2, on SQuAD v1.1), the overlapping windows a long context is read in, and the best answer
span across them.

An input is ``[CLS] question [SEP] piece of the context [SEP]`` (classifier.pair_row, segment ids 0 then 1).
A context longer than one window is read as windows starting every ``stride`` tokens, the question repeated
in each (BERT's doc_stride; transformers' run_qa). Training points a window that does not hold the whole
answer at [CLS] (SQuAD v1, as run_qa). The answer is the span (first <= last, at most ``max_answer_tokens``
long, inside the context) with the highest start + end logit over every window, mapped back to the context's
characters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.models.classifier import pad_rows, pair_room, pair_row, second_start, window_starts
from lmkit.models.config import ModelConfig
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
class Span:
    """The best answer to one question: its context tokens and its score (start logit + end logit)."""

    first: int
    last: int
    score: float


def best_spans(logits: Sequence[torch.Tensor], windows: Sequence[Window], spans: Sequence[Sequence[tuple[int, int]]],
               max_answer_tokens: int) -> list[Span | None]:
    """The best span of each example over all its windows: the highest start + end logit with first <= last <
    first + ``max_answer_tokens``, both context tokens with content (content_spans). ``logits[k]`` (T, 2) are
    window k's start and end logits; ``spans[e]`` example e's content spans. Ties go to the earlier window
    and position. None for an example with no candidate (a context of white space alone)."""
    best: list[Span | None] = [None] * len(spans)
    for window, window_logits in zip(windows, logits):
        rows = slice(window.context_start, window.context_start + window.length)
        start, end = window_logits[rows, 0].double(), window_logits[rows, 1].double()  # (L,)
        content = torch.tensor([a < b for a, b in spans[window.example][window.first:window.first + window.length]])
        n = window.length
        offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # (L, L): last - first
        allowed = (offsets >= 0) & (offsets < max_answer_tokens) & content[:, None] & content[None, :]
        if not allowed.any():
            continue
        scores = (start[:, None] + end[None, :]).masked_fill(~allowed, float("-inf"))  # (L, L)
        flat = int(torch.argmax(scores))
        score = float(scores.flatten()[flat])
        current = best[window.example]
        if current is None or score > current.score:
            best[window.example] = Span(window.first + flat // n, window.first + flat % n, score)
    return best


class SpanExtractor(nn.Module):
    """An encoder and a linear start/end head over its hidden states (transformers' BertForQuestionAnswering
    has the same: ``qa_outputs``). The body keeps its parameter names (``backbone.*``) so a masked-LM
    checkpoint's weights load into it; its language-model head and pooler are removed (unused parameters
    would stall data-parallel training)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        from lmkit.models import build_model  # the registry imports the models package

        if config.arch != "bert":
            raise ValueError(f"extractive question answering needs an encoder (bert), not {config.arch}")
        self.config = config
        self.backbone = build_model(config)
        for name in ("lm_head", "mlm_head", "sentence_head"):  # pretraining heads (a tied lm_head's matrix stays)
            if hasattr(self.backbone, name):
                delattr(self.backbone, name)
        self.backbone.pooler = None
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.d_model, 2)  # (start, end)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Start and end logits (B, T, 2), -inf at padding, and with targets (B, 2) (the answer's first and
        last row positions; 0 for [CLS]) the mean of the start and end cross entropies (BERT's loss)."""
        hidden = self.backbone.encode(idx, attention_mask, token_types)  # (B, T, C)
        logits = self.head(self.dropout(hidden)).float()  # (B, T, 2)
        if attention_mask is not None:
            logits = logits.masked_fill(~attention_mask[..., None], float("-inf"))
        loss = None
        if targets is not None:
            loss = (F.cross_entropy(logits[..., 0], targets[:, 0]) + F.cross_entropy(logits[..., 1], targets[:, 1])) / 2
        return logits, loss


@torch.no_grad()
def window_logits(model: nn.Module, windows: Sequence[Window], batch_size: int, pad: int,
                  device: torch.device | None = None) -> list[torch.Tensor]:
    """Start and end logits (T_k, 2) of each window, float32 on the CPU, computed in batches of windows of
    similar length."""
    device = device or model.backbone.tok_emb.weight.device  # an embedding: stays a float parameter when quantized
    order = sorted(range(len(windows)), key=lambda k: len(windows[k].ids))
    out: list[torch.Tensor | None] = [None] * len(windows)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        idx, mask, types = format_windows([windows[k] for k in chosen], pad)
        logits, _ = model(idx.to(device), None, mask.to(device), types.to(device))
        logits = logits.float().cpu()
        for row, k in enumerate(chosen):
            out[k] = logits[row, :len(windows[k].ids)]
    return out  # type: ignore[return-value]


# -- from text to answers ------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Extracted:
    """An answer: its text, its characters ``[start, end)`` in the context and its score (start + end logit)."""

    text: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        score = round(self.score, 4) if math.isfinite(self.score) else None  # None: no answer (JSON has no -inf)
        return {"answer": self.text, "start": self.start, "end": self.end, "score": score}


def extract(model: nn.Module, encoded: Sequence[EncodedQuestion], contexts: Sequence[str], settings: QASettings,
            specials: Specials, batch_size: int, windows: list[Window] | None = None,
            logits: list[torch.Tensor] | None = None) -> list[Extracted]:
    """The best answer to each question (an empty one, at the context's start, where there is no token with
    content); ``windows`` and their ``logits`` when already computed."""
    windows = windows if windows is not None else question_windows(encoded, settings, specials)
    logits = logits if logits is not None else window_logits(model, windows, batch_size, specials.pad)
    found = best_spans(logits, windows, [item.spans for item in encoded], settings.max_answer_tokens)
    answers = []
    for item, context, span in zip(encoded, contexts, found):
        if span is None:
            answers.append(Extracted("", 0, 0, float("-inf")))
            continue
        start, end = item.spans[span.first][0], item.spans[span.last][1]
        answers.append(Extracted(context[start:end], start, end, span.score))
    return answers
