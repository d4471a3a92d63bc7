"""Exact match and token F1 of extractive answers, exactly as the official SQuAD v1.1 evaluation script
(``evaluate-v1.1.py``, Rajpurkar et al. 2016) defines them: answers are normalized (lowercased, ASCII
punctuation removed, the articles a/an/the removed, white space collapsed); F1 counts the normalized
whitespace tokens the prediction shares with a gold answer (with multiplicity); each question scores its best
over its gold answers. lmkit reports the means in [0, 1] (the script prints them times 100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse white space (in the script's order)."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token F1 of the normalized answers; 0 when they share no token (an empty answer included)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(predicted) & Counter(expected)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(expected)
    return 2 * precision * recall / (precision + recall)


def best_over(metric, prediction: str, golds: Sequence[str]) -> float:
    """The script's metric_max_over_ground_truths."""
    return max(metric(prediction, gold) for gold in golds)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> tuple[dict[str, float], list[dict]]:
    """Mean exact match and F1 over the questions, and each question's two scores."""
    if not predictions or len(predictions) != len(golds):
        raise ValueError("need one prediction per question, and at least one question")
    each = [{"exact_match": best_over(exact_match, p, g), "f1": best_over(f1, p, g)}
            for p, g in zip(predictions, golds)]
    return ({name: sum(s[name] for s in each) / len(each) for name in ("exact_match", "f1")}, each)
