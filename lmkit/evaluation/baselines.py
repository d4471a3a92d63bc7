"""``lmkit evaluate --baseline``: what a model without a transformer scores on the same data, so a report
says what the network adds.

- Classification: TF-IDF of word 1-2-grams and character 2-5-grams (within word boundaries), sublinear
  term frequencies, and a multinomial logistic regression (scikit-learn, the ``lmkit[baselines]`` extra).
  Its inverse regularization C is chosen on the validation split (or a stratified tenth of train when the
  dataset has none) from ``C_GRID``, then the model is fitted on the whole train split. The texts are the
  dataset's token ids decoded by its tokenizer: what the network sees, as text.
- Language modelling: an interpolated Kneser-Ney token trigram model (Chen & Goodman 1998, one discount
  per order, D = n1 / (n1 + 2 n2)) counted on the train split, scored like the network: each document
  separately, from its start, its closing ``</s>`` not scored; bits per byte over the same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lmkit.errors import UserError

EXTRA = "lmkit[baselines]"
C_GRID = (1.0, 10.0, 100.0)
MAX_TRAIN_TOKENS = 50_000_000  # the n-gram baseline counts at most this many training tokens (memory)


def require_sklearn(flag: str = "--baseline") -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError(f"{flag}: the classification baseline needs scikit-learn; install {EXTRA}") from None


# -- classification ----------------------------------------------------------------------------------------
def tfidf_pipeline(c: float):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2))
    return make_pipeline(features, LogisticRegression(C=c, max_iter=3000))


@dataclass
class ClassifierBaseline:
    predictions: np.ndarray   # predicted label index per evaluated text
    method: dict[str, Any]


def tfidf_classifier(train_texts: Sequence[str], train_labels: np.ndarray, val_texts: Sequence[str],
                     val_labels: np.ndarray, texts: Sequence[str]) -> ClassifierBaseline:
    """Fit on train (C chosen by validation accuracy, ties to the smaller C) and predict ``texts``."""
    scores = {}
    for c in C_GRID:
        model = tfidf_pipeline(c).fit(train_texts, train_labels)
        scores[c] = float(np.mean(model.predict(val_texts) == val_labels))
    best = max(C_GRID, key=lambda c: (scores[c], -c))
    model = tfidf_pipeline(best).fit(train_texts, train_labels)
    method = {"model": "TF-IDF (word 1-2-grams + char_wb 2-5-grams, sublinear tf) + logistic regression",
              "C": best, "validation_accuracy_by_C": {str(c): round(s, 4) for c, s in scores.items()},
              "train_examples": len(train_texts), "validation_examples": len(val_texts)}
    return ClassifierBaseline(model.predict(list(texts)), method)


# -- language modelling ------------------------------------------------------------------------------------
def _discount(counts: np.ndarray) -> float:
    n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
    return n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5


def _lookup(keys: np.ndarray, values: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """values[keys == query] per query, 0 where a query is absent (keys sorted, unique)."""
    if len(keys) == 0:
        return np.zeros(len(queries), dtype=np.float64)
    at = np.minimum(np.searchsorted(keys, queries), len(keys) - 1)
    return np.where(keys[at] == queries, values[at], 0).astype(np.float64)


def _counted(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(keys, return_counts=True)


class KneserNeyTrigram:
    """Interpolated Kneser-Ney over token ids ``0..vocab_size-1``; documents start after two start symbols."""

    order = 3

    def __init__(self, documents: Sequence[Sequence[int]], vocab_size: int):
        self.vocab_size = vocab_size
        self.base = vocab_size + 1   # ids and the start symbol (vocab_size)
        if float(self.base) ** 3 >= 2.0 ** 62:
            raise ValueError(f"vocabulary of {vocab_size:,} tokens is too large for int64 trigram keys")
        u, v, w = self._columns(documents)
        self.training_tokens = len(w)
        b = self.base
        tri, c3 = _counted((u * b + v) * b + w)                 # c(u v w)
        ctx3 = tri // b                                           # (u v) of each distinct trigram
        self.ctx3_keys, first = np.unique(ctx3, return_index=True)
        self.ctx3_total = np.add.reduceat(c3, first)              # c(u v .)
        self.ctx3_types = np.diff(np.append(first, len(ctx3)))   # N1+(u v .)
        self.tri_keys, self.tri_counts, self.d3 = tri, c3, _discount(c3)
        # The bigram level counts continuations: N1+(. v w), the distinct u before each (v w).
        bi, n2 = _counted(tri % (b * b))
        ctx2 = bi // b
        self.ctx2_keys, first = np.unique(ctx2, return_index=True)
        self.ctx2_total = np.add.reduceat(n2, first)
        self.ctx2_types = np.diff(np.append(first, len(ctx2)))
        self.bi_keys, self.bi_counts, self.d2 = bi, n2, _discount(n2)
        # The unigram level: N1+(. w), the distinct v before each w, interpolated with the uniform distribution.
        words, n1 = _counted(bi % b)
        self.uni = np.zeros(vocab_size, dtype=np.float64)
        self.uni[words[words < vocab_size]] = n1[words < vocab_size]
        self.d1 = _discount(n1)
        total, types = self.uni.sum(), int(np.count_nonzero(self.uni))
        if total:
            self.p1 = np.maximum(self.uni - self.d1, 0) / total + self.d1 * types / total / vocab_size
        else:
            self.p1 = np.full(vocab_size, 1.0 / vocab_size)

    def _columns(self, documents: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u, v, w) of every predicted token: two start symbols before each document."""
        us, vs, ws = [], [], []
        for tokens in documents:
            tokens = np.asarray(tokens, dtype=np.int64)
            if not len(tokens):
                continue
            if tokens.min() < 0 or tokens.max() >= self.vocab_size:
                raise ValueError(f"token id outside the vocabulary of {self.vocab_size}")
            padded = np.concatenate([[self.vocab_size, self.vocab_size], tokens])
            us.append(padded[:-2])
            vs.append(padded[1:-1])
            ws.append(padded[2:])
        if not ws:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return np.concatenate(us), np.concatenate(vs), np.concatenate(ws)

    def probabilities(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """P(w | u v) for arrays of ids (u, v may be the start symbol ``vocab_size``)."""
        b = self.base
        p = self.p1[w]
        total2 = _lookup(self.ctx2_keys, self.ctx2_total, v)
        seen2 = total2 > 0
        safe2 = np.where(seen2, total2, 1.0)
        count2 = _lookup(self.bi_keys, self.bi_counts, v * b + w)
        types2 = _lookup(self.ctx2_keys, self.ctx2_types, v)
        p = np.where(seen2, np.maximum(count2 - self.d2, 0) / safe2 + self.d2 * types2 / safe2 * p, p)
        context = u * b + v
        total3 = _lookup(self.ctx3_keys, self.ctx3_total, context)
        seen3 = total3 > 0
        safe3 = np.where(seen3, total3, 1.0)
        count3 = _lookup(self.tri_keys, self.tri_counts, context * b + w)
        types3 = _lookup(self.ctx3_keys, self.ctx3_types, context)
        return np.where(seen3, np.maximum(count3 - self.d3, 0) / safe3 + self.d3 * types3 / safe3 * p, p)

    def document_nats(self, documents: Sequence[Sequence[int]]) -> list[float]:
        """Negative log-likelihood of each document's tokens (nats)."""
        out = []
        for tokens in documents:
            u, v, w = self._columns([tokens])
            out.append(-math.fsum(np.log(self.probabilities(u, v, w))) if len(w) else 0.0)
        return out


def ngram_bits_per_byte(train: Sequence[Sequence[int]], documents: Sequence[Sequence[int]],
                        n_bytes: Sequence[int], vocab_size: int) -> tuple[dict[str, float], dict[str, Any]]:
    """The trigram baseline's loss, perplexity and bits per byte on ``documents``, and its method."""
    kept, tokens = [], 0
    for document in train:  # the first MAX_TRAIN_TOKENS tokens of the train split
        if tokens >= MAX_TRAIN_TOKENS:
            break
        kept.append(document)
        tokens += len(document)
    model = KneserNeyTrigram(kept, vocab_size)
    from lmkit.evaluation.language_modeling import lm_metrics  # the network's definitions, for the same numbers

    nats = math.fsum(model.document_nats(documents))
    metrics = lm_metrics(nats, sum(len(d) for d in documents), sum(n_bytes))
    method = {"model": "interpolated Kneser-Ney token trigram", "discounts": [round(model.d1, 4),
              round(model.d2, 4), round(model.d3, 4)], "train_documents": len(kept),
              "train_tokens": model.training_tokens}
    return metrics, method
