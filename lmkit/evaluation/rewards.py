"""Rewards a program can check: a reply (a string) scored against its JSONL record, for RL (``finetune --task
grpo``) and ``evaluate --task pass-at-k``; and the unbiased pass@k estimator.

The ``--reward`` grammar: terms joined by ``+``, their scores added::

    exact            1 when the reply equals the record's answer, normalized (case, spaces, surrounding punctuation)
    number           1 when the last number in the reply equals the answer's (its last number, for a text answer)
    json             1 when the reply parses as JSON
    regex:PATTERN    1 when the pattern's first group (or whole match) in the reply equals the answer, normalized;
                     a record without an answer: 1 when the pattern matches. It takes the rest of the spec (a
                     pattern may hold "+"), so it comes last: ``length:64+regex:(\\d+)``
    length:N         -max(0, reply tokens - N) / N: a penalty on replies longer than N tokens
    MODULE:FUNCTION  a user's own function, or PATH.py:FUNCTION: called as function(prompt, reply, record) and
                     returning a number; it is the user's own code, run in this process (as TRL takes reward
                     functions)

e.g. ``number+length:64``. An answer that is a list accepts any of its items. A reply *passes* when every checking
term (all but ``length``) scores above 0: the length penalty never fails a correct reply. A reward that cannot be
imported, raises, or returns what is not a finite number is refused in one line naming it and the record
(``FILE:LINE``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import numbers
import re
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Callable

from lmkit.errors import UserError

BUILT_IN = ("exact", "number", "json", "regex:PATTERN", "length:N")
# A number as replies write it: signed, with thousands separators or not, with decimals or not.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_PUNCTUATION = " \t\n.,;:!?'\"`"


@dataclass(frozen=True)
class Score:
    """A reply's reward and whether it passes (every checking term above 0)."""

    value: float
    passed: bool


@dataclass(frozen=True)
class Term:
    """One term of a reward: ``score(prompt, reply, record, tokens) -> float``."""

    text: str                    # as the spec spells it, for messages
    score: Callable[[Any, str, dict, int], float]
    checks: bool = True          # counts for passing (the length penalty does not)
    needs_answer: bool = False   # every record must hold an answer
    user: bool = False           # the user's own function: its result is checked


def normalized(text: Any) -> str:
    """Case-folded, whitespace collapsed, surrounding punctuation dropped: how exact and regex compare."""
    return " ".join(str(text).casefold().split()).strip(_PUNCTUATION)


def last_number(text: str) -> Decimal | None:
    """The last number written in ``text`` (``1,234.5`` reads as 1234.5), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return Decimal(found[-1].replace(",", ""))
    except InvalidOperation:
        return None


def answer_number(answer: Any) -> Decimal | None:
    """An answer's number: the number itself, or the last number of a text (GSM8K's ``... #### 72``)."""
    if isinstance(answer, bool):
        return None
    if isinstance(answer, numbers.Real):
        return Decimal(str(answer))
    return last_number(str(answer))


def _answers(record: dict, field: str) -> list[Any]:
    value = record.get(field)
    return list(value) if isinstance(value, list) else [] if value is None else [value]


def _exact(field: str) -> Term:
    def score(prompt, reply, record, tokens):
        return float(any(normalized(reply) == normalized(a) for a in _answers(record, field)))
    return Term("exact", score, needs_answer=True)


def _number(field: str) -> Term:
    def score(prompt, reply, record, tokens):
        got = last_number(reply)
        return float(got is not None and any(got == answer_number(a) for a in _answers(record, field)))
    return Term("number", score, needs_answer=True)


def _json(prompt, reply, record, tokens) -> float:
    try:
        json.loads(reply)
    except ValueError:
        return 0.0
    return 1.0


def _regex(pattern: str, field: str) -> Term:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"--reward regex:{pattern}: not a regular expression ({exc})") from None

    def score(prompt, reply, record, tokens):
        match = compiled.search(reply)
        if match is None:
            return 0.0
        answers = _answers(record, field)
        if not answers:
            return 1.0
        found = match.group(1) if compiled.groups else match.group(0)
        return float(found is not None and any(normalized(found) == normalized(a) for a in answers))
    return Term(f"regex:{pattern}", score)


def _length(limit_text: str) -> Term:
    if not limit_text.isdigit() or int(limit_text) < 1:
        raise UserError(f"--reward length:{limit_text}: N must be a positive whole number of tokens")
    limit = int(limit_text)

    def score(prompt, reply, record, tokens):
        return -max(0, tokens - limit) / limit
    return Term(f"length:{limit}", score, checks=False)


def load_function(text: str) -> Callable[..., Any]:
    """The user's function of ``MODULE:FUNCTION`` or ``PATH.py:FUNCTION`` (a module is looked for in the current
    directory too); refused in one line when it cannot be imported or is not a function."""
    where, _, name = text.rpartition(":")
    flag = f"--reward {text}"
    if not where or not name.isidentifier():
        raise UserError(f"{flag}: not a reward; use one of {', '.join(BUILT_IN)}, MODULE:FUNCTION or "
                        "PATH.py:FUNCTION (see --help)")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise UserError(f"{flag}: {where}: no such file")
            spec = importlib.util.spec_from_file_location(f"lmkit_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))  # `lmkit` as a script does not look in the current directory
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as exc:  # the user's module: any error of its import is theirs to fix, named in one line
        raise UserError(f"{flag}: cannot import {where} ({type(exc).__name__}: {exc})") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{flag}: {where} has no function {name!r}")
    return function


def _user(text: str) -> Term:
    function = load_function(text)

    def score(prompt, reply, record, tokens):
        return function(prompt, reply, record)
    return Term(text, score, user=True)


def _term(text: str, field: str) -> Term:
    if text == "exact":
        return _exact(field)
    if text == "number":
        return _number(field)
    if text == "json":
        return Term("json", _json)
    if text.startswith("length:"):
        return _length(text[len("length:"):])
    return _user(text)


def split_terms(spec: str) -> list[str]:
    """The terms of a --reward spec: split at "+", but a regex term takes the rest of the spec."""
    terms, rest = [], spec
    while rest:
        if rest.startswith("regex:"):
            terms.append(rest)
            break
        head, _, rest = rest.partition("+")
        terms.append(head.strip())
    return terms


def code_files(spec: str) -> list[str]:
    """The source files of a --reward spec's own functions (PATH.py, or MODULE's file): their content belongs in a
    run's or report's identity (a changed function is another reward)."""
    files = []
    for term in split_terms(spec):
        where = term.rpartition(":")[0]
        if not where or term.startswith(("regex:", "length:")):
            continue
        found = where if where.endswith(".py") else _module_file(where)
        if found is not None:
            files.append(found)
    return files


def _module_file(name: str) -> str | None:
    """The source file of the user's module ``name``, looked for as load_function imports it (the current directory
    too), without running it; None when it is not found or is no .py file (a built-in module)."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a parent package that cannot be imported: load_function names the problem
        return None
    origin = spec.origin if spec is not None else None
    return origin if origin and origin.endswith(".py") and Path(origin).is_file() else None


class Reward:
    """A parsed ``--reward``: its terms, scoring replies against records whose answer is in ``answer_field``."""

    def __init__(self, spec: str, answer_field: str = "answer"):
        if not spec.strip():
            raise UserError(f"--reward: empty; use one of {', '.join(BUILT_IN)}, MODULE:FUNCTION or "
                            "PATH.py:FUNCTION")
        self.spec, self.answer_field = spec, answer_field
        self.terms: list[Term] = []
        for term in split_terms(spec):
            if term.startswith("regex:"):
                self.terms.append(_regex(term[len("regex:"):], answer_field))
            elif not term:
                raise UserError(f"--reward {spec}: an empty term (terms are joined by a single +)")
            else:
                self.terms.append(_term(term, answer_field))

    @property
    def needs_answer(self) -> bool:
        return any(term.needs_answer for term in self.terms)

    def check_record(self, record: dict, where: str) -> None:
        """Refuse a record the reward cannot score: no answer where a term compares with one, or (number) an
        answer without a number."""
        if not self.needs_answer:
            return
        answers = _answers(record, self.answer_field)
        terms = ", ".join(t.text for t in self.terms if t.needs_answer)
        if not answers:
            raise UserError(f"{where}: no {self.answer_field!r} field, which --reward {terms} compares the reply "
                            "with (see --answer-field)")
        if any(t.text == "number" for t in self.terms) and all(answer_number(a) is None for a in answers):
            raise UserError(f"{where}: the answer {answers[0]!r} holds no number for --reward number")

    def score(self, prompt: Any, reply: str, record: dict, tokens: int, where: str) -> Score:
        """The reward of ``reply`` (``tokens`` long) to ``prompt`` (a text or a conversation) of ``record``
        (at ``where``, for messages)."""
        total, passed, checked = 0.0, True, False
        for term in self.terms:
            try:
                value = term.score(prompt, reply, record, tokens)
            except Exception as exc:  # the user's code: named in one line, its traceback chained
                if not term.user:
                    raise
                raise UserError(f"--reward {term.text}: raised {type(exc).__name__}: {exc} on the prompt at "
                                f"{where}") from exc
            if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):  # True and False: 1 and 0
                raise UserError(f"--reward {term.text}: returned {value!r} for the prompt at {where}; a reward "
                                "must be a finite number")
            total += float(value)
            if term.checks:
                checked = True
                passed = passed and float(value) > 0
        return Score(total, passed if checked else total >= 0)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from ``n`` samples of which ``c`` pass (Chen et al. 2021, "Evaluating
    Large Language Models Trained on Code", eq. 1): 1 - C(n - c, k) / C(n, k), computed as their numerically
    stable product."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@{k} of {c} passing among {n} samples: need 0 < k <= n and 0 <= c <= n")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product
