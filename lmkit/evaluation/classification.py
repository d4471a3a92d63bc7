"""Sequence classification: class probabilities from a classifier checkpoint, and its metrics."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from lmkit.evaluation.metrics import classification_metrics
from lmkit.evaluation.scoring import Inference
from lmkit.models.classifier import format_inputs
from lmkit.vocab import Specials


def predict_probabilities(inference: Inference, documents: Sequence[Sequence[int]], arch: str, max_len: int,
                          specials: Specials, advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Softmax class probabilities (N, K), float64, in the order of ``documents``. Inputs are framed as in
    finetuning (``format_inputs``) and cut to ``max_len`` tokens; batches hold documents of similar length."""
    order = sorted(range(len(documents)), key=lambda i: -len(documents[i]))
    probabilities: np.ndarray | None = None
    for start in range(0, len(order), inference.batch_size):
        chosen = order[start:start + inference.batch_size]
        idx, mask = format_inputs([np.asarray(documents[i]).tolist() for i in chosen], arch, max_len, specials)
        with inference.forward_pass(int(mask.sum())):
            logits, _ = inference.model(idx.to(inference.device), attention_mask=mask.to(inference.device))  # (B, K)
            batch = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        if probabilities is None:
            probabilities = np.zeros((len(documents), batch.shape[1]), dtype=np.float64)
        probabilities[chosen] = batch
        if advance is not None:
            advance(len(chosen))
    assert probabilities is not None, "no documents"  # callers refuse empty inputs first
    return probabilities


def evaluate_classification(probabilities: np.ndarray, gold: Sequence[int], labels: list[str],
                            ids: Sequence[Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(metrics, per_class and confusion as classification_metrics returns them; predictions records)."""
    predicted = probabilities.argmax(axis=1)
    result = classification_metrics(np.asarray(gold), predicted, labels)
    predictions = [{"id": document_id, "gold": labels[g], "predicted": labels[p],
                    "probabilities": {label: round(float(q), 6) for label, q in zip(labels, row)}}
                   for document_id, g, p, row in zip(ids, gold, predicted, probabilities)]
    return result, predictions
