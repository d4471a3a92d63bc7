"""Batched, gradient-free forward passes, and the log-likelihood of token spans under a causal model.

A ``Span`` is a token sequence whose last ``scored`` tokens are predicted from everything before
them. Perplexity windows, zero-shot answer choices and the harness's requests are all spans, so one
routine (``score_spans``) scores them all: spans are sorted by length and batched with right padding
(a causal model's real positions never see padding placed after them), and log-probabilities are
taken in float64 from the model's logits and summed exactly rounded (``math.fsum``): bf16 autocast
changes the forward pass but not the arithmetic of the sums, and a sum does not depend on which
spans were batched together or in what order.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from lmkit.vocab import LMKIT, PAD_ID, Specials

# Rows of logits turned into float64 log-probabilities at a time (bounds memory for large vocabularies).
_LOGPROB_ELEMENTS = 1 << 24


@dataclass
class Inference:
    """A model in eval mode on a device, with its precision and batch size; counts what it computes."""

    model: nn.Module | None  # None when only generation runs (it loads its own)
    device: torch.device
    precision: str           # "bf16" or "fp32", already resolved
    batch_size: int
    specials: Specials = LMKIT  # the tokenizer's special ids (lmkit's, or an imported tokenizer's)
    tokens: int = 0          # real (non-padding) input tokens through the model
    seconds: float = 0.0     # time inside forward passes, transfers and scoring included

    def __post_init__(self) -> None:
        if self.model is not None:
            self.model.eval()

    @contextmanager
    def forward_pass(self, real_tokens: int) -> Iterator[None]:
        """No gradients, bf16 autocast when asked; the time and tokens count towards tokens/s."""
        autocast = (torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
                    if self.precision == "bf16" else nullcontext())
        started = time.perf_counter()
        with torch.inference_mode(), autocast:
            yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - started
        self.tokens += real_tokens

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Span:
    """``tokens[:-1]`` are the inputs and ``tokens[1:]`` the targets; the last ``scored`` targets count."""

    tokens: np.ndarray
    scored: int

    def __post_init__(self) -> None:
        if not 0 < self.scored < len(self.tokens):
            raise ValueError(f"a span of {len(self.tokens)} tokens cannot score {self.scored}")


@dataclass(frozen=True)
class SpanScore:
    values: np.ndarray  # float64 log-probabilities (nats) of the scored targets, in order
    greedy: bool        # every scored target is the model's most likely token

    @property
    def logprob(self) -> float:
        """The correctly rounded sum (math.fsum): the same whatever the batch the span was scored in."""
        return math.fsum(self.values)

    @property
    def tokens(self) -> int:
        return len(self.values)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (N,) in float64 of targets (N,) under logits (N, V), and whether each target is
    the argmax. Computed in row blocks, so a large vocabulary never needs a float64 copy of all rows."""
    logprobs = torch.empty(len(targets), dtype=torch.float64, device=logits.device)
    greedy = torch.empty(len(targets), dtype=torch.bool, device=logits.device)
    rows = max(1, _LOGPROB_ELEMENTS // max(logits.shape[-1], 1))
    for start in range(0, len(targets), rows):
        block = logits[start:start + rows].double()  # (n, V)
        wanted = targets[start:start + rows]
        logprobs[start:start + rows] = torch.log_softmax(block, dim=-1).gather(1, wanted[:, None]).squeeze(1)
        greedy[start:start + rows] = block.argmax(dim=-1) == wanted
    return logprobs, greedy


def scored_logits(model: nn.Module, idx: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) of a causal language model (GPT, LSTM) at the N positions where ``scored`` (B, T) is
    True, row after row: the output projection runs on those positions alone (a sliding window scores only
    its last ``stride`` positions; padding none)."""
    return model.lm_head(model.encode(idx)[scored])


def score_spans(inference: Inference, spans: Sequence[Span],
                advance: Callable[[int], None] | None = None) -> list[SpanScore]:
    """Score every span with batched forward passes; results in the order of ``spans``.

    ``advance(n)`` is called after each batch with the number of spans it held (for progress bars).
    """
    order = sorted(range(len(spans)), key=lambda i: -len(spans[i].tokens))  # similar lengths share a batch
    results: list[SpanScore | None] = [None] * len(spans)
    for start in range(0, len(order), inference.batch_size):
        chosen = order[start:start + inference.batch_size]
        width = len(spans[chosen[0]].tokens) - 1  # the longest inputs of the batch
        idx = torch.full((len(chosen), width), PAD_ID, dtype=torch.long)
        targets = torch.full((len(chosen), width), PAD_ID, dtype=torch.long)
        scored = torch.zeros((len(chosen), width), dtype=torch.bool)
        for row, i in enumerate(chosen):
            tokens = torch.as_tensor(np.asarray(spans[i].tokens, dtype=np.int64))
            length = len(tokens) - 1
            idx[row, :length] = tokens[:-1]
            targets[row, :length] = tokens[1:]
            scored[row, length - spans[i].scored:length] = True
        real = sum(len(spans[i].tokens) - 1 for i in chosen)
        with inference.forward_pass(real):
            idx, targets, scored = (t.to(inference.device) for t in (idx, targets, scored))
            logits = scored_logits(inference.model, idx, scored)            # (N, V)
            logprobs, greedy = token_logprobs(logits, targets[scored])      # (N,) each, row after row
            logprobs, greedy = logprobs.cpu().numpy(), greedy.cpu().numpy()
        bounds = np.cumsum([0, *(spans[i].scored for i in chosen)])
        for row, i in enumerate(chosen):
            mine = slice(bounds[row], bounds[row + 1])
            results[i] = SpanScore(logprobs[mine], bool(greedy[mine].all()))
        if advance is not None:
            advance(len(chosen))
    return results  # type: ignore[return-value]


@torch.no_grad()
def sequence_logprobs(model: nn.Module, start: int, ids: list[int], top: int = 0
                      ) -> tuple[list[float], list[dict[int, float]]]:
    """Log-probability of each of ``ids`` under a causal model, given ``start`` (the id a causal prompt
    follows) and the ids before it, and the ``top`` most likely ids at each position with theirs (empty dicts
    when ``top`` is 0): what a completions API returns as logprobs."""
    idx = torch.tensor([[start, *ids[:-1]]], device=model.tok_emb.weight.device)
    logits, _ = model(idx)
    logits = logits[0].float()  # (T, V)
    logprobs, _ = token_logprobs(logits, torch.tensor(ids, device=logits.device))
    tops: list[dict[int, float]] = [{} for _ in ids]
    if top:
        best = torch.log_softmax(logits.double(), dim=-1).topk(top, dim=-1)
        tops = [dict(zip(i.tolist(), v.tolist())) for v, i in zip(best.values, best.indices)]
    return logprobs.tolist(), tops


@torch.no_grad()
def sequences_logprobs(model: nn.Module, start: int, rows: list[list[int]], top: int = 0
                       ) -> list[tuple[list[float], list[dict[int, float]]]]:
    """``sequence_logprobs`` of several rows, read together (right-padded: a causal model's real positions never
    see the padding after them), up to about 2^24 logits a forward pass."""
    device = model.tok_emb.weight.device
    results: list[tuple[list[float], list[dict[int, float]]]] = []
    budget = max(_LOGPROB_ELEMENTS // model.config.vocab_size, 1)  # positions whose logits one pass holds
    group: list[list[int]] = []
    for index, ids in enumerate(rows):
        group.append(ids)
        following = rows[index + 1] if index + 1 < len(rows) else None
        if following is not None and sum(map(len, group)) + len(following) <= budget:
            continue
        width = max(len(ids) for ids in group)
        idx = torch.full((len(group), width), PAD_ID, dtype=torch.long)
        for row, ids in enumerate(group):
            idx[row, :len(ids)] = torch.tensor([start, *ids[:-1]])
        real = torch.arange(width)[None, :] < torch.tensor([len(ids) for ids in group])[:, None]  # (b, width)
        hidden = model.encode(idx.to(device))[real.to(device)]  # (N, C): the real positions, row after row
        logits = model.lm_head(model.head_input(hidden)).float()  # (N, V)
        logprobs, _ = token_logprobs(logits, torch.tensor([t for ids in group for t in ids], device=device))
        best = torch.log_softmax(logits.double(), dim=-1).topk(top, dim=-1) if top else None
        offset = 0
        for ids in group:
            mine = slice(offset, offset + len(ids))
            tops = ([dict(zip(i.tolist(), v.tolist())) for v, i in zip(best.values[mine], best.indices[mine])]
                    if best is not None else [{} for _ in ids])
            results.append((logprobs[mine].tolist(), tops))
            offset += len(ids)
        group = []
    return results
