"""Sequence classification: class probabilities from a classifier checkpoint, and its metrics."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from lmkit.data.framing import aggregate_logits, chunk_texts, format_examples
from lmkit.evaluation.metrics import classification_metrics
from lmkit.evaluation.scoring import Inference
from lmkit.vocab import Specials


def predict_probabilities(inference: Inference, documents: Sequence[Sequence[int]], arch: str, max_len: int,
                          specials: Specials, advance: Callable[[float], None] | None = None, long_text: str = "cut",
                          stride: int | None = None, pairs: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Softmax class probabilities (N, K), float64, in the order of ``documents``. Inputs are framed as in
    finetuning (``format_inputs``); a document longer than ``max_len`` is cut to it (``long_text`` cut) or
    read as overlapping chunks whose logits are aggregated (mean or max: framing.chunk_texts). With
    ``pairs`` (each document's second text), a pair is framed as one input and cut longest first. Batches
    hold chunks of similar length."""
    if pairs is None:
        chunks, owner = chunk_texts([np.asarray(d).tolist() for d in documents], arch, max_len, long_text, stride)
        seconds = None
    else:
        chunks, owner = [np.asarray(d).tolist() for d in documents], np.arange(len(documents))
        seconds = [np.asarray(d).tolist() for d in pairs]
    order = sorted(range(len(chunks)), key=lambda i: -len(chunks[i]) - (len(seconds[i]) if seconds else 0))
    logits: torch.Tensor | None = None
    for start in range(0, len(order), inference.batch_size):
        chosen = order[start:start + inference.batch_size]
        idx, mask, types = format_examples([chunks[i] for i in chosen], None if seconds is None else
                                           [seconds[i] for i in chosen], arch, max_len, specials)
        types = None if types is None else types.to(inference.device)
        with inference.forward_pass(int(mask.sum())):
            batch, _ = inference.model(idx.to(inference.device), attention_mask=mask.to(inference.device),
                                       token_types=types)  # (B, K)
        if logits is None:
            logits = torch.zeros((len(chunks), batch.shape[1]), dtype=torch.float64)
        logits[chosen] = batch.double().cpu()
        if advance is not None:
            advance(len(chosen) * len(documents) / len(chunks))
    assert logits is not None, "no documents"  # callers refuse empty inputs first
    return torch.softmax(aggregate_logits(logits, owner, len(documents), long_text), dim=-1).numpy()


def evaluate_classification(probabilities: np.ndarray, gold: Sequence[int], labels: list[str],
                            ids: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per_class and confusion as classification_metrics returns them; predictions records)."""
    predicted = probabilities.argmax(axis=1)
    result = classification_metrics(np.asarray(gold), predicted, labels)
    predictions = [{"id": document_id, "gold": labels[g], "predicted": labels[p],
                    "probabilities": {label: round(float(q), 6) for label, q in zip(labels, row)}}
                   for document_id, g, p, row in zip(ids, gold, predicted, probabilities)]
    return result, predictions
