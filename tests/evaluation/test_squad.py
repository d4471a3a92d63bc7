"""SQuAD v1.1 exact match and F1: hand-worked cases, and equality with the official script's formulas."""

import re
import string
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmkit.evaluation.squad import exact_match, f1, normalize_answer, squad_scores


# -- the official evaluate-v1.1.py, restated as it is written (the reference) -----------------------------------
def official_normalize(s):
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_em(prediction, ground_truth):
    return official_normalize(prediction) == official_normalize(ground_truth)


def test_hand_worked_normalization_and_scores():
    assert normalize_answer("  The Cat's   hat, an apple!") == "cats hat apple"
    assert normalize_answer("Theory of a thing") == "theory of thing"  # "the" inside a word stays
    assert exact_match("the Eiffel Tower.", "Eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    # "in 1889 in Paris" vs "1889": 1 shared token; precision 1/4, recall 1/1, F1 = 2 * 0.25 / 1.25 = 0.4
    assert f1("in 1889, in Paris", "1889") == pytest.approx(0.4)
    # repeated tokens count with multiplicity: "a b b" vs "b b c" -> articles go: "b b" vs "b b c": 2 shared,
    # precision 2/2, recall 2/3, F1 = 0.8
    assert f1("a b b", "b b c") == pytest.approx(0.8)
    assert f1("", "anything") == 0.0 and f1("the", "a") == 0.0  # nothing left to share
    # multiple golds: the best of each metric over them (possibly from different golds)
    scores, each = squad_scores(["Denver Broncos", "the bank"], [["Broncos", "Denver Broncos!"], ["a river bank"]])
    assert each == [{"exact_match": 1.0, "f1": 1.0}, {"exact_match": 0.0, "f1": pytest.approx(2 / 3)}]
    assert scores == {"exact_match": 0.5, "f1": pytest.approx((1 + 2 / 3) / 2)}


WORDS = st.sampled_from(["a", "an", "the", "The", "cat", "Cat.", "hat,", "(x)", "1889", "é", "an-d", "theory", " ",
                         "\t", "\n", "A!", "--"])


@given(st.lists(WORDS, max_size=8).map(" ".join), st.lists(st.lists(WORDS, max_size=8).map(" ".join), min_size=1,
                                                            max_size=3))
def test_equals_the_official_script(prediction, golds):
    assert normalize_answer(prediction) == official_normalize(prediction)
    _, (each,) = squad_scores([prediction], [golds])
    assert each["exact_match"] == max(float(official_em(prediction, g)) for g in golds)
    assert each["f1"] == pytest.approx(max(official_f1(prediction, g) for g in golds))


def test_refuses_mismatched_inputs():
    with pytest.raises(ValueError):
        squad_scores([], [])
