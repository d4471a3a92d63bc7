from collections import Counter

from lmkit.data.dedup import text_digest
from lmkit.data.split import split_of


def test_split_fractions_roughly_respected():
    counts = Counter(split_of(text_digest(f"document {i}"), 0.1, 0.05) for i in range(20000))
    assert abs(counts["validation"] / 20000 - 0.1) < 0.01
    assert abs(counts["test"] / 20000 - 0.05) < 0.01


def test_split_stable_when_corpus_grows():
    before = {f"doc {i}": split_of(text_digest(f"doc {i}"), 0.2, 0.0) for i in range(500)}
    grown = [f"doc {i}" for i in range(2000)]  # more documents, another order
    after = {text: split_of(text_digest(text), 0.2, 0.0) for text in reversed(grown)}
    assert all(after[text] == split for text, split in before.items())


def test_a_validation_split_never_takes_every_example():
    import numpy as np

    from lmkit.data.split import split_off, stratified_split

    train, validation = split_off(["a", "b"], 0.8, seed=0)  # round(1.6) would hold out both
    assert len(train) == 1 and len(validation) == 1
    train_idx, val_idx = stratified_split(np.array([0, 0, 1, 1]), 0.8, seed=0)
    assert sorted(np.array([0, 0, 1, 1])[train_idx].tolist()) == [0, 1] and len(val_idx) == 2
