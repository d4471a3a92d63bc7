"""Answers from a span (qa) checkpoint: the best span of each context for its question, read in windows exactly
as finetuning read them (lmkit.data.qa_windows), with the settings the checkpoint recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lmkit.data.jsonl import json_objects
from lmkit.data.qa import parse_record
from lmkit.data.qa_windows import QASettings, encode_question
from lmkit.errors import UserError
from lmkit.evaluation.spans import Extracted, extract
from lmkit.tokenizer import Tokenizer


def answer_questions(model: nn.Module, tokenizer: Tokenizer, settings: QASettings, questions: list[str],
                     contexts: list[str], batch_size: int = 8) -> list[Extracted]:
    """The best answer to each question in its context (the text, its characters and its score)."""
    encoded = [encode_question(tokenizer, question, context)
               for question, context in zip(questions, contexts)]
    return extract(model, encoded, contexts, settings, tokenizer.specials, batch_size)


@dataclass
class Questions:
    """Questions to answer, each with its context, the record its output starts from and its name in messages."""

    questions: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def questions_of_jsonl(text: str, source: str) -> Questions:
    """Records with a "question" and a "context" (others fields are kept in the output; answers are not read)."""
    found = Questions()
    for where, record in json_objects(text, source, 'a JSON object with "question" and "context" fields'):
        example = parse_record(record, where, with_answers=False)
        found.questions.append(example.question)
        found.contexts.append(example.context)
        found.records.append(record)
        found.names.append(where)
    if not found.questions:
        raise UserError(f"{source}: no questions in it")
    return found


def one_question(question: str, context: str, where: str) -> Questions:
    for name, value in (("--question", question), (where, context)):
        if not value.strip():
            raise UserError(f"{name}: is empty")
    return Questions([question], [context], [{"question": question, "context": context}], ["--question"])
