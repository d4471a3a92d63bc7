"""The answers of a span (extractive QA) model: start and end logits of every window of a question's context,
and the best span across them (the highest start + end logit, at most ``max_answer_tokens`` long, inside the
context), mapped back to the context's characters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from lmkit.data.qa_windows import EncodedQuestion, QASettings, Window, format_windows, question_windows
from lmkit.vocab import Specials


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
