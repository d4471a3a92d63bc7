"""``--fail-if``: conditions on a report's metrics that make ``lmkit evaluate`` exit non-zero, for CI.

Grammar, one condition per item: ``NAME OP NUMBER`` with OP one of ``< <= > >= == !=`` (spaces
allowed around OP). Several conditions may be given comma-separated, joined by ``and``, or by
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
_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_./\-]*)\s*(<=|>=|==|!=|<|>)\s*"
                        r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*$")
_AND = re.compile(r"\s+and\s+")


class GateFailed(UserError):
    """One or more --fail-if conditions held; the report was still written."""

    exit_code = GATE_EXIT_CODE


@dataclass(frozen=True)
class Condition:
    name: str
    op: str
    threshold: float
    text: str  # as the user wrote it, for messages

    def holds(self, value: float) -> bool:
        return math.isnan(value) or OPERATORS[self.op](value, self.threshold)


def split_expressions(expressions: list[str]) -> list[str]:
    """The single conditions in flag values that may hold several ("a<1, b>2", "a<1 and b>2")."""
    items = []
    for expression in expressions:
        for part in expression.split(","):
            items.extend(piece.strip() for piece in _AND.split(part.strip()))
    return items


def parse_condition(text: str) -> Condition:
    """One ``NAME OP NUMBER``; a ValueError names the expression and the grammar."""
    match = _CONDITION.match(text)
    if not match:
        raise ValueError(f"--fail-if {text!r}: does not parse; write NAME OP NUMBER, e.g. \"accuracy<0.8\" "
                         f"or \"bpb>1.2\" (OP one of {', '.join(sorted(OPERATORS, key=len))})")
    name, op, number = match.groups()
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
    missing = [c for c in conditions if c.name not in available]
    if missing:
        shown = ", ".join(sorted(available)) or "none"
        raise UserError("\n".join(f"--fail-if {c.text!r}: {where} has no metric '{c.name}' (it has: {shown})"
                                  for c in missing))


def failures(conditions: list[Condition], metrics: dict[str, float]) -> list[str]:
    """A line for each condition that holds, naming it and the metric's value."""
    check_names(conditions, set(metrics), "the report")
    return [f"--fail-if {c.text!r} holds: {c.name} = {metrics[c.name]:.6g}" for c in conditions
            if c.holds(float(metrics[c.name]))]
