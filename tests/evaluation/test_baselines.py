"""The baselines of `lmkit evaluate --baseline`: the Kneser-Ney trigram is a distribution (it sums to one
over the vocabulary in every context), matches hand-worked values, and learns; the TF-IDF classifier
chooses its C on validation and separates what words separate."""

import itertools
import math

import numpy as np
import pytest

from lmkit.evaluation import baselines
from lmkit.evaluation.baselines import KneserNeyTrigram, ngram_bits_per_byte


def _corpus(seed=0, documents=60, vocab=23):
    rng = np.random.default_rng(seed)
    # A Markov chain with a few likely successors per token, so that the n-gram statistics mean something.
    successors = rng.integers(0, vocab, size=(vocab, 3))
    out = []
    for _ in range(documents):
        tokens = [int(rng.integers(vocab))]
        for _ in range(int(rng.integers(1, 30))):
            tokens.append(int(successors[tokens[-1], rng.integers(3)]))
        out.append(tokens)
    return out


def test_probabilities_sum_to_one_in_every_context():
    vocab = 23
    model = KneserNeyTrigram(_corpus(), vocab)
    start = vocab  # the start symbol
    contexts = [(start, start), (start, 5), (3, 7), (0, 0), (22, 11)]
    seen = set()
    for tokens in _corpus():
        padded = [start, start] + tokens
        seen.update(itertools.pairwise(padded))
    contexts += list(seen)[:20]
    for u, v in contexts:
        w = np.arange(vocab)
        p = model.probabilities(np.full(vocab, u), np.full(vocab, v), w)
        assert np.all(p > 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12), (u, v)


def test_hand_worked_probabilities():
    # One document "0 1 0 1" over a vocabulary of 3; start symbol s = 3.
    # Trigrams (s s 0) (s 0 1) (0 1 0) (1 0 1), each once: D3 = 1 / (1 + 0) = 1.
    # Continuations N1+(. v w): (s 0) after {s}, (0 1) after {s, 1}, (1 0) after {0}: n1 = 2, n2 = 1, D2 = 1/2.
    # N1+(. w): 0 after {s, 1}, 1 after {0}: D1 = 1 / (1 + 2) = 1/3, total 3, types 2.
    model = KneserNeyTrigram([[0, 1, 0, 1]], 3)
    assert (model.d1, model.d2, model.d3) == (pytest.approx(1 / 3), 0.5, 1.0)
    p1 = np.array([(2 - 1 / 3) / 3, (1 - 1 / 3) / 3, 0.0]) + (1 / 3) * 2 / 3 / 3
    assert model.p1 == pytest.approx(p1)
    # P(1 | 1 0): the context (1 0) was seen once, with one type: (1 - 1)/1 + 1 * 1/1 * P2(1 | 0);
    # P2(1 | 0): v = 0 has continuations (0 1) x 2, total 2, one type: (2 - 1/2)/2 + 1/2 * 1/2 * p1[1].
    p2 = 1.5 / 2 + 0.25 * p1[1]
    assert model.probabilities(np.array([1]), np.array([0]), np.array([1]))[0] == pytest.approx(p2)
    # An unseen context (2 2) backs off to the unigram level.
    assert model.probabilities(np.array([2]), np.array([2]), np.array([2]))[0] == pytest.approx(p1[2])


def test_the_trigram_learns_and_bits_per_byte_count_the_bytes():
    train, held_out = _corpus(seed=0, documents=400), _corpus(seed=0, documents=450)[400:]
    n_bytes = [4 * len(d) for d in held_out]
    metrics, method = ngram_bits_per_byte(train, held_out, n_bytes, 23)
    assert method["train_tokens"] == sum(len(d) for d in train)
    uniform_bpb = sum(len(d) for d in held_out) * math.log(23) / math.log(2) / sum(n_bytes)
    assert metrics["bpb"] < 0.5 * uniform_bpb  # three likely successors out of 23
    assert metrics["bpb"] == pytest.approx(metrics["loss"] * sum(len(d) for d in held_out) / math.log(2)
                                           / sum(n_bytes))
    # Scored document by document from its start, like the network: the sum of the per-document figures.
    model = KneserNeyTrigram(train, 23)
    assert metrics["loss"] * sum(len(d) for d in held_out) == pytest.approx(sum(model.document_nats(held_out)))


def test_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="outside the vocabulary of 5"):
        KneserNeyTrigram([[1, 5]], 5)


def test_tfidf_classifier_chooses_c_on_validation_and_separates_topics():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    topics = {"space": "orbit rocket planet", "food": "bread cheese soup", "law": "court judge verdict"}
    filler = "the a of and it is was this that".split()

    def make(n):
        labels = rng.choice(sorted(topics), size=n)
        texts = [" ".join(list(rng.choice(filler, 8)) + [str(rng.choice(topics[label].split()))]) for label in labels]
        return texts, labels

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = make(90), make(30), make(60)
    fitted = baselines.tfidf_classifier(train_x, train_y, val_x, val_y, test_x)
    assert np.mean(fitted.predictions == test_y) == 1.0
    assert fitted.method["C"] in baselines.C_GRID
    assert set(fitted.method["validation_accuracy_by_C"]) == {str(c) for c in baselines.C_GRID}
    assert fitted.method["train_examples"] == 90 and fitted.method["validation_examples"] == 30
