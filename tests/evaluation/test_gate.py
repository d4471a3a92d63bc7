"""The --fail-if grammar: what parses, what is refused (naming the expression), and when a gate fails."""

import math

import pytest

from lmkit.errors import UserError
from lmkit.evaluation.gate import GATE_EXIT_CODE, GateFailed, failures, parse_condition, parse_conditions


@pytest.mark.parametrize("text,name,op,threshold", [
    ("accuracy<0.8", "accuracy", "<", 0.8),
    ("bpb > 1.2", "bpb", ">", 1.2),
    ("  macro_f1 >= .5 ", "macro_f1", ">=", 0.5),
    ("loss<=3e-1", "loss", "<=", 0.3),
    ("mcc==-1", "mcc", "==", -1.0),
    ("tiny_task/acc_norm != 1", "tiny_task/acc_norm", "!=", 1.0),
])
def test_conditions_parse(text, name, op, threshold):
    condition = parse_condition(text)
    assert (condition.name, condition.op, condition.threshold) == (name, op, threshold)


@pytest.mark.parametrize("text", ["accuracy", "accuracy<", "<0.8", "accuracy<<0.8", "accuracy=0.8", "accuracy<0.8x",
                                  "0acc<1", "accuracy < 0high", "accuracy<0.8 or bpb>1"])
def test_bad_conditions_are_refused_naming_them(text):
    conditions, problems = parse_conditions([text])
    assert conditions == [] and len(problems) == 1
    assert problems[0].startswith(f"--fail-if {text.strip()!r}: does not parse; write NAME OP NUMBER or NAME OP NAME")


def test_several_conditions_by_comma_and_or_repetition():
    conditions, problems = parse_conditions(["accuracy<0.8, bpb>1.2", "loss>3 and ppl>=20"])
    assert problems == []
    assert [(c.name, c.op) for c in conditions] == [("accuracy", "<"), ("bpb", ">"), ("loss", ">"), ("ppl", ">=")]
    _, problems = parse_conditions(["accuracy<0.8,"])
    assert problems and "empty condition" in problems[0]


def test_failures_name_each_condition_that_holds():
    conditions, _ = parse_conditions(["accuracy<0.8", "bpb>1.2", "loss>=2"])
    held = failures(conditions, {"accuracy": 0.75, "bpb": 1.0, "loss": 2.0})
    assert held == ["--fail-if 'accuracy<0.8' holds: accuracy = 0.75", "--fail-if 'loss>=2' holds: loss = 2"]
    assert failures(conditions, {"accuracy": 0.9, "bpb": 1.0, "loss": 1.0}) == []


def test_a_nan_metric_fails_its_condition():
    conditions, _ = parse_conditions(["loss>5"])
    assert failures(conditions, {"loss": math.nan}) == ["--fail-if 'loss>5' holds: loss = nan"]


def test_a_metric_the_report_lacks_is_an_error():
    conditions, _ = parse_conditions(["acc<0.8"])
    with pytest.raises(UserError, match=r"--fail-if 'acc<0.8': the report has no metric 'acc' \(it has: accuracy, "
                                        r"macro_f1\)"):
        failures(conditions, {"accuracy": 0.9, "macro_f1": 0.5})


def test_gate_failure_has_its_own_exit_code():
    assert GateFailed("x").exit_code == GATE_EXIT_CODE == 3


def test_a_condition_may_compare_two_metrics():
    condition = parse_condition("accuracy < baseline_accuracy")
    assert (condition.name, condition.op, condition.threshold, condition.other) == (
        "accuracy", "<", None, "baseline_accuracy")
    assert failures([condition], {"accuracy": 0.70, "baseline_accuracy": 0.71}) == [
        "--fail-if 'accuracy < baseline_accuracy' holds: accuracy = 0.7, baseline_accuracy = 0.71"]
    assert failures([condition], {"accuracy": 0.72, "baseline_accuracy": 0.71}) == []
    assert failures([condition], {"accuracy": 0.72, "baseline_accuracy": math.nan})  # NaN on either side fails
    with pytest.raises(UserError, match="the report has no metric 'baseline_accuracy'"):
        failures([condition], {"accuracy": 0.72})
