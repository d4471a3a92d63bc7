"""``--fail-if``: conditions on a report's metrics that make ``lmkit evaluate`` exit non-zero, for CI.

Grammar, one condition per item: ``NAME OP NUMBER`` or ``NAME OP NAME`` (another metric of the same
report, e.g. ``accuracy<baseline_accuracy``) with OP one of ``< <= > >= == !=`` (spaces allowed around OP).
Several conditions may be given comma-separated, joined by ``and``, or by
repeating the flag; the run fails when *any* of them holds, and names each one that held.
A NaN metric fails every condition on it: CI must not pass on a number that is not one.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Callable

from lmkit.errors import UserError

GATE_EXIT_CODE = 3  # distinct from 1 (a user error) and 2 (bad usage): "the model missed a threshold"

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
}
# Metric names: letters, digits, _ . / - (harness metrics are "task/metric"); a number may be signed or
# in exponent notation.
_NAME = r"[A-Za-z_][A-Za-z0-9_./\-]*"
_CONDITION = re.compile(rf"^\s*({_NAME})\s*(<=|>=|==|!=|<|>)\s*"
                        rf"(?:([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|({_NAME}))\s*$")
_AND = re.compile(r"\s+and\s+")


class GateFailed(UserError):
    """One or more --fail-if conditions held; the report was still written."""

    exit_code = GATE_EXIT_CODE


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    threshold: float | None   # a number, or None when the right side is the metric ``other``
    text: str  # as the user wrote it, for messages
    other: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if self.other is None else (self.name, self.other)

    def bound(self, metrics: dict[str, float]) -> float:
        return float(metrics[self.other]) if self.other is not None else float(self.threshold)

    def holds(self, value: float, bound: float | None = None) -> bool:
        bound = self.threshold if bound is None else bound
        return math.isnan(value) or math.isnan(bound) or OPERATORS[self.op](value, bound)


def split_expressions(expressions: list[str]) -> list[str]:
    """The single conditions in flag values that may hold several ("a<1, b>2", "a<1 and b>2")."""
    items = []
    for expression in expressions:
        for part in expression.split(","):
            items.extend(piece.strip() for piece in _AND.split(part.strip()))
    return items


def parse_condition(text: str) -> Condition:
    """One ``NAME OP NUMBER`` or ``NAME OP NAME``; a ValueError names the expression and the grammar."""
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"--fail-if {text!r}: does not parse; write NAME OP NUMBER or NAME OP NAME, e.g. "
                         f"\"accuracy<0.8\", \"bpb>1.2\" or \"accuracy<baseline_accuracy\" (OP one of "
                         f"{', '.join(sorted(OPERATORS, key=len))})")
    name, op, number, other = match.groups()
    if other is not None:
        return Condition(name, op, None, text.strip(), other)
    return Condition(name, op, float(number), text.strip())


def parse_conditions(expressions: list[str]) -> tuple[list[Condition], list[str]]:
    """(conditions, problems): every expression is parsed, every bad one reported."""
    conditions, problems = [], []
    for text in split_expressions(expressions):
        if not text:
            problems.append(f"--fail-if {', '.join(expressions)!r}: an empty condition (stray comma or 'and'?)")
            continue
        try:
            conditions.append(parse_condition(text))
        except ValueError as exc:
            problems.append(str(exc))
    return conditions, problems


def check_names(conditions: list[Condition], available: set[str] | list[str], where: str) -> None:
    """Refuse conditions on metrics ``where`` (a report, a task) does not have."""
    missing = [(c, name) for c in conditions for name in c.names if name not in available]
    if missing:
        shown = ", ".join(sorted(available)) or "none"
        raise UserError("\n".join(f"--fail-if {c.text!r}: {where} has no metric '{name}' (it has: {shown})"
                                  for c, name in missing))


def failures(conditions: list[Condition], metrics: dict[str, float]) -> list[str]:
    """A line for each condition that holds, naming it and the metric's value."""
    check_names(conditions, set(metrics), "the report")
    return [f"--fail-if {c.text!r} holds: {c.name} = {metrics[c.name]:.6g}"
            + (f", {c.other} = {metrics[c.other]:.6g}" if c.other is not None else "")
            for c in conditions if c.holds(float(metrics[c.name]), c.bound(metrics))]
