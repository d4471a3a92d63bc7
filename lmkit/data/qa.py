"""Extractive question answering records (SQuAD v1.1's task, Rajpurkar et al. 2016): a question, a
context, and answers that are spans of the context given by their text and character offset.

A JSONL line holds one question, in Hugging Face's ``squad`` layout or a simpler one::

    {"id": "q1", "question": "...", "context": "...", "answers": {"text": ["..."], "answer_start": [17]}}
    {"question": "...", "context": "...", "answer": "...", "answer_start": 17}

(``answers`` may also be a list of ``{"text", "answer_start"}`` objects, as in SQuAD's own JSON.) Contexts are
read as they are, never cleaned: the offsets index the text exactly as written. An answer whose text is not
the context's at its offset is refused with its line, as is a missing field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lmkit.data.jsonl import first_record, read_jsonl
from lmkit.errors import UserError

QA_FIELDS = ("question", "context")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n\s*\n")
FORMAT_HINT = ('{"question", "context", "answers": {"text": [...], "answer_start": [...]}} or '
               '{"question", "context", "answer", "answer_start"}')


@dataclass(frozen=True)
class Answer:
    text: str
    start: int          # character offset in the context

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@dataclass(frozen=True)
class QAExample:
    """One question on one context, with its gold answers (none for a question to be answered)."""

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    where: str = ""      # FILE:LINE, for messages


def _string(record: dict, field: str, where: str) -> str:
    value = record.get(field)
    if value is None:
        raise UserError(f"{where}: field {field!r} is missing (a question-answering record is {FORMAT_HINT})")
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: field {field!r} must be a non-empty string")
    return value


def _answers(record: dict, where: str) -> list[tuple[object, object]]:
    """(text, answer_start) pairs of a record, in any of the accepted layouts, not yet checked."""
    if "answers" in record:
        answers = record["answers"]
        if isinstance(answers, dict):
            texts, starts = answers.get("text"), answers.get("answer_start")
            if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
                raise UserError(f"{where}: field 'answers' needs lists 'text' and 'answer_start' of the same length")
            return list(zip(texts, starts))
        if isinstance(answers, list) and all(isinstance(a, dict) for a in answers):
            return [(a.get("text"), a.get("answer_start")) for a in answers]
        raise UserError(f"{where}: field 'answers' must be {{\"text\": [...], \"answer_start\": [...]}} or a list "
                        "of {\"text\", \"answer_start\"} objects")
    if "answer" in record:
        if "answer_start" not in record:
            raise UserError(f"{where}: field 'answer_start' is missing (the answer's character offset in the "
                            "context)")
        return [(record["answer"], record["answer_start"])]
    raise UserError(f"{where}: field 'answers' is missing (a question-answering record is {FORMAT_HINT})")


def check_answer(context: str, text: object, start: object, where: str) -> Answer:
    """The answer, refused unless it is non-empty text found in ``context`` at character ``start``."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: an answer must be a non-empty string, got {json.dumps(text)}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(context) - len(text):
        raise UserError(f"{where}: answer_start {json.dumps(start)} of answer {text!r} is not an offset in the "
                        f"context ({len(context)} characters)")
    found = context[start:start + len(text)]
    if found != text:
        raise UserError(f"{where}: answer {text!r} does not match the context at answer_start {start} "
                        f"(found {found!r})")
    return Answer(text, start)


def parse_record(record: dict, where: str, with_answers: bool) -> QAExample:
    """A record as a QAExample; ``with_answers``: gold answers are required (training, evaluation), else
    ignored (a question to answer)."""
    question, context = _string(record, "question", where), _string(record, "context", where)
    answers: tuple[Answer, ...] = ()
    if with_answers:
        found = _answers(record, where)
        if not found:
            raise UserError(f"{where}: no answer (SQuAD v2's unanswerable questions are not supported: every "
                            "question needs an answer in its context)")
        answers = tuple(check_answer(context, text, start, where) for text, start in found)
    identity = record.get("id")
    return QAExample(str(identity) if identity is not None else where, question, context, answers, where)


def read_qa(path: str | Path, with_answers: bool = True, limit: int = 0) -> list[QAExample]:
    """Every record of a JSONL file (the first ``limit``, when given), checked; an empty file is refused."""
    examples = []
    for where, record in read_jsonl(path, f"a JSON object: {FORMAT_HINT}"):
        examples.append(parse_record(record, where, with_answers))
        if limit and len(examples) >= limit:
            break
    if not examples:
        raise UserError(f"{path}: no records")
    return examples


def looks_like_qa(path: str | Path) -> bool:
    """Whether the first record of a JSONL file has a question and a context (finetune --task auto)."""
    record = first_record(path)
    return record is not None and all(field in record for field in QA_FIELDS)


def first_sentence(context: str) -> str:
    """The trivial baseline's answer: the context up to its first sentence end (., ! or ? before white
    space or the end) or its first blank line, whichever comes first, stripped."""
    text = context.strip()
    end = _SENTENCE_END.search(text)
    return text[:end.start() + (end.group() in ".!?") if end else len(text)].strip()
