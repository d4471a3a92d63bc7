"""Classification metrics against hand-worked cases and against scikit-learn on random predictions."""

import numpy as np
import pytest
from sklearn import metrics as sk

from lmkit.evaluation.metrics import classification_metrics, confusion_matrix, matthews_corrcoef


def test_hand_worked_binary_case():
    # gold:      a a a b b
    # predicted: a a b b a   -> a: tp 2, fp 1, fn 1; b: tp 1, fp 1, fn 1
    result = classification_metrics(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 0]), ["a", "b"])
    m = result["metrics"]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class"]["a"] == {"precision": pytest.approx(2 / 3), "recall": pytest.approx(2 / 3),
                                        "f1": pytest.approx(2 / 3), "support": 3}
    assert result["per_class"]["b"] == {"precision": pytest.approx(1 / 2), "recall": pytest.approx(1 / 2),
                                        "f1": pytest.approx(1 / 2), "support": 2}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2) / 5)
    # MCC = (tp*tn - fp*fn) / sqrt(...) with a positive: tp 2, tn 1, fp 1, fn 1 -> (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert m["mcc"] == pytest.approx(1 / 6)
    assert result["confusion"] == [[2, 1], [1, 1]]


def test_perfect_and_constant_predictions():
    perfect = classification_metrics(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 2]), ["x", "y", "z"])["metrics"]
    assert perfect["accuracy"] == perfect["macro_f1"] == perfect["weighted_f1"] == perfect["mcc"] == 1.0
    constant = classification_metrics(np.array([0, 1, 1]), np.array([1, 1, 1]), ["x", "y"])
    assert constant["metrics"]["mcc"] == 0.0  # undefined (a constant prediction): 0, as scikit-learn
    assert constant["per_class"]["x"]["precision"] == 0.0  # nothing predicted as x: 0, not NaN


def test_a_class_never_seen_is_left_out_of_the_macro_average():
    result = classification_metrics(np.array([0, 0, 1]), np.array([0, 1, 1]), ["a", "b", "unseen"])
    assert result["per_class"]["unseen"]["support"] == 0
    assert result["metrics"]["macro_f1"] == pytest.approx(sk.f1_score([0, 0, 1], [0, 1, 1], average="macro"))


@pytest.mark.parametrize("seed", range(8))
def test_equal_to_scikit_learn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(2, 7))
    n = int(rng.integers(5, 200))
    gold = rng.integers(0, n_classes, n)
    # Mostly right, sometimes wrong, and some classes possibly never predicted or never gold.
    predicted = np.where(rng.random(n) < 0.6, gold, rng.integers(0, n_classes, n))
    labels = [f"c{k}" for k in range(n_classes)]
    result = classification_metrics(gold, predicted, labels)
    m = result["metrics"]
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(gold, predicted))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="weighted", zero_division=0))
    assert m["macro_precision"] == pytest.approx(sk.precision_score(gold, predicted, average="macro", zero_division=0))
    assert m["macro_recall"] == pytest.approx(sk.recall_score(gold, predicted, average="macro", zero_division=0))
    assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(gold, predicted), abs=1e-12)
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        gold, predicted, labels=list(range(n_classes)), zero_division=0)
    for k, label in enumerate(labels):
        row = result["per_class"][label]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[k], recall[k], f1[k], support[k]))
    assert result["confusion"] == sk.confusion_matrix(gold, predicted, labels=list(range(n_classes))).tolist()


def test_confusion_matrix_and_mcc_building_blocks():
    matrix = confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]), 3)
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert matthews_corrcoef(np.zeros((2, 2))) == 0.0


def test_no_examples_is_an_error_not_a_nan():
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics(np.array([]), np.array([]), ["a", "b"])
