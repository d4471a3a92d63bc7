"""Language-modeling metrics: token loss, perplexity and bits per byte of documents under a causal
model, with a sliding window over long documents; masked-LM loss and accuracy under seeded masking.

Causal models score each document separately, conditioned on ``</s>`` (the separator pretraining
puts before every document), and the document's own tokens only: the closing ``</s>`` is not
scored, so bits per byte measure the text and nothing else. Bits per byte divide the total
negative log-likelihood, in bits, by the UTF-8 bytes of the text, so models with different
tokenizers compare (Gao et al. 2020, "The Pile", section 5).

Sliding window (the Hugging Face perplexity guide; Press et al. 2021): windows of at most ``window``
input tokens; the first scores all of its targets, each later one scores the next ``stride`` tokens
with the rest of the window as context, so every token is scored exactly once with at least
``window - stride`` tokens of context (the whole document when it fits in one window). With
``stride == window`` this is the lm-evaluation-harness's ``loglikelihood_rolling``: disjoint
prediction windows, the last one given a full window of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from lmkit.data.packing import MaskingSettings, mask_tokens, seeded_generator
from lmkit.evaluation.choice import context_start
from lmkit.evaluation.scoring import Inference, Span, score_spans, token_logprobs
from lmkit.vocab import IGNORE_INDEX, LMKIT, Specials

_NATS_PER_BIT = math.log(2)
_MAX_LOSS_FOR_PPL = 700.0  # exp overflows float64 beyond ~709: the perplexity is reported as inf


def rolling_spans(tokens: Sequence[int], prefix: int, window: int, stride: int) -> list[Span]:
    """Spans that score every token of ``tokens`` once, conditioned on ``prefix`` and as much of the
    preceding text as the window allows. Empty for an empty document."""
    if window < 1 or not 1 <= stride <= window:
        raise ValueError(f"need 1 <= stride <= window, got window {window}, stride {stride}")
    sequence = np.concatenate([[prefix], np.asarray(tokens, dtype=np.int64)])  # index 0 is context only
    n = len(sequence) - 1  # targets are sequence[1..n]
    spans, done = [], 0    # targets up to index ``done`` are scored
    while done < n:
        end = min(done + (window if done == 0 else stride), n)  # the last target of this window
        start = max(0, end - window)                            # inputs sequence[start:end]
        spans.append(Span(sequence[start:end + 1], end - done))
        done = end
    return spans


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Total negative log-likelihood in nats → bits per UTF-8 byte of the text it scored. (One division
    by bytes x ln 2: a uniform byte-level model, ln 256 = 8 ln 2 nats per byte, gives exactly 8.)"""
    return nats / (n_bytes * _NATS_PER_BIT)


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < _MAX_LOSS_FOR_PPL else math.inf


@dataclass
class DocumentScore:
    nats: float   # negative log-likelihood of the document's tokens
    tokens: int
    n_bytes: int


def lm_metrics(nats: float, tokens: int, n_bytes: int) -> dict[str, float]:
    loss = nats / tokens
    return {"loss": loss, "ppl": perplexity(loss), "bpb": bits_per_byte(nats, n_bytes)}


def document_logprobs(inference: Inference, documents: Sequence[Sequence[int]], window: int, stride: int,
                      advance: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Each document's token log-probabilities (float64 nats, in order) under a causal model, scored
    with the sliding window."""
    spans, owner = [], []
    for index, tokens in enumerate(documents):
        document_spans = rolling_spans(tokens, context_start(inference.specials), window, stride)
        spans += document_spans
        owner += [index] * len(document_spans)
    pieces: list[list[np.ndarray]] = [[] for _ in documents]
    for index, score in zip(owner, score_spans(inference, spans, advance)):
        pieces[index].append(score.values)  # a document's spans come in order
    return [np.concatenate(p) if p else np.zeros(0) for p in pieces]


def score_documents(inference: Inference, documents: Sequence[Sequence[int]], window: int, stride: int,
                    advance: Callable[[int], None] | None = None) -> list[float]:
    """Log-likelihood (nats, <= 0) of each document, exactly rounded."""
    return [math.fsum(values) for values in document_logprobs(inference, documents, window, stride, advance)]


def evaluate_causal(inference: Inference, documents: Sequence[Sequence[int]], n_bytes: Sequence[int],
                    window: int, stride: int, advance: Callable[[int], None] | None = None
                    ) -> tuple[dict[str, float], list[DocumentScore]]:
    """Corpus metrics (loss per token, perplexity, bits per byte) and each document's score. Sums are
    exactly rounded over all tokens, so they do not depend on batching or document order."""
    values = document_logprobs(inference, documents, window, stride, advance)
    scores = [DocumentScore(-math.fsum(v), len(v), int(size)) for v, size in zip(values, n_bytes)]
    nats = -math.fsum(np.concatenate(values)) if values else 0.0
    return lm_metrics(nats, sum(s.tokens for s in scores), sum(s.n_bytes for s in scores)), scores


def masked_windows(documents: Sequence[Sequence[int]], window: int, specials: Specials = LMKIT) -> list[np.ndarray]:
    """``[CLS] chunk [SEP]`` windows of at most ``window`` tokens over the documents joined by [SEP],
    as pretraining frames them (lmkit.data.packing.MaskedWindows), the last chunk kept even if short."""
    cls, sep = specials.require("cls", "masked-LM windows"), specials.require("sep", "masked-LM windows")
    pieces = []
    for tokens in documents:
        pieces += [np.asarray(tokens, dtype=np.int64), np.array([sep], dtype=np.int64)]
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
    chunk = window - 2
    return [np.concatenate([[cls], stream[start:start + chunk], [sep]]) for start in range(0, len(stream), chunk)]


def evaluate_masked(inference: Inference, documents: Sequence[Sequence[int]], window: int, vocab_size: int,
                    masking: MaskingSettings, seed: int, advance: Callable[[int], None] | None = None
                    ) -> tuple[dict[str, float], int]:
    """Masked-LM loss (nats per masked token), its exponent and accuracy under BERT's 80/10/10 corruption,
    with masks drawn from ``seed`` (Devlin et al. 2019); and the number of masked tokens."""
    windows = masked_windows(documents, window, inference.specials)
    corrupted = [mask_tokens(torch.as_tensor(w)[None], vocab_size, masking, seeded_generator(seed, i),
                             inference.specials)  # masks depend on (seed, window) only
                 for i, w in enumerate(windows)]
    values, correct, masked = [], 0, 0
    for start in range(0, len(windows), inference.batch_size):
        batch = corrupted[start:start + inference.batch_size]
        width = max(inputs.shape[1] for inputs, _ in batch)
        idx = torch.full((len(batch), width), inference.specials.pad, dtype=torch.long)
        targets = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, (inputs, window_targets) in enumerate(batch):
            idx[row, :inputs.shape[1]], targets[row, :inputs.shape[1]] = inputs[0], window_targets[0]
            attention[row, :inputs.shape[1]] = True
        with inference.forward_pass(int(attention.sum())):
            idx, targets, attention = (t.to(inference.device) for t in (idx, targets, attention))
            logits, _ = inference.model(idx, attention_mask=attention)  # (B, T, V)
            chosen = targets != IGNORE_INDEX
            logprobs, greedy = token_logprobs(logits[chosen], targets[chosen])
            values.append(logprobs.cpu().numpy())
            correct += int(greedy.sum())
            masked += int(chosen.sum())
        if advance is not None:
            advance(len(batch))
    loss = -math.fsum(np.concatenate(values)) / masked
    return {"loss": loss, "ppl": perplexity(loss), "mlm_accuracy": correct / masked}, masked
