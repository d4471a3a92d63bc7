"""Zero-shot multiple choice: the answer is the choice the model finds most likely after the context.

Items are JSON Lines ``{"context": str, "choices": [str, ...], "answer": int}`` (an optional "id").
Each choice is scored by the log-likelihood of its tokens after ``</s> context`` (Brown et al. 2020,
section 2.4); ``acc_norm`` divides it by the choice's length in characters first, as the
lm-evaluation-harness does, so long answers are not penalized for having more tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from lmkit.data.jsonl import read_jsonl
from lmkit.errors import UserError
from lmkit.evaluation.scoring import Inference, Span, score_spans
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import Specials


@dataclass(frozen=True)
class ChoiceItem:
    id: str
    context: str
    choices: list[str]
    answer: int


def read_choice_file(path: str, limit: int = 0) -> list[ChoiceItem]:
    """Items of a JSONL file; a malformed line is an error naming ``path:line``."""
    items = []
    for where, record in read_jsonl(path, "an object with context, choices and answer"):
        context, choices, answer = record.get("context"), record.get("choices"), record.get("answer")
        if not isinstance(context, str):
            raise UserError(f"{where}: 'context' must be a string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: 'choices' must be a list of at least 2 non-empty strings")
        if answer is None:
            raise UserError(f"{where}: no 'answer' (the index of the right choice); accuracy needs it")
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise UserError(f"{where}: 'answer' must be an index into choices (0 to {len(choices) - 1}), "
                            f"got {answer!r}")
        items.append(ChoiceItem(str(record.get("id", where)), context, choices, answer))
        if limit and len(items) >= limit:
            break
    return items


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Tokens of context and continuation as the model reads them together. Trailing spaces of the
    context move to the continuation, and the continuation's tokens are those of the whole text after
    the context's: the lm-evaluation-harness's ``HFLM._encode_pair``."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_tokens = tokenizer.encode(context)
    return whole[:len(context_tokens)], whole[len(context_tokens):]


def context_start(specials: Specials) -> int:
    """The token a scored text follows: the tokenizer's start token (lmkit's: </s>), else its end token."""
    return specials.eos if specials.start is None else specials.start


def continuation_span(context: Sequence[int], continuation: Sequence[int], max_len: int, start: int) -> Span:
    """``</s> context continuation`` scoring the continuation; the context is cut from the left to fit
    ``max_len`` inputs (the continuation itself must fit)."""
    tokens = np.asarray([start, *context, *continuation], dtype=np.int64)
    if len(continuation) > max_len:
        raise UserError(f"a continuation of {len(continuation)} tokens exceeds the model's {max_len}-token window")
    return Span(tokens[-(max_len + 1):], len(continuation))


def evaluate_choices(inference: Inference, tokenizer: Tokenizer, items: Sequence[ChoiceItem], max_len: int,
                     advance: Callable[[int], None] | None = None
                     ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(accuracy and acc_norm, one prediction record per item)."""
    spans = []
    for item in items:
        for choice in item.choices:
            context, continuation = encode_pair(tokenizer, item.context, choice)
            if not continuation:
                raise UserError(f"{item.id}: choice {choice!r} has no tokens of its own after the context")
            spans.append(continuation_span(context, continuation, max_len, context_start(inference.specials)))
    scores = score_spans(inference, spans, advance)
    correct = correct_norm = 0
    predictions = []
    position = 0
    for item in items:
        logprobs = np.array([scores[position + k].logprob for k in range(len(item.choices))])
        position += len(item.choices)
        normalized = logprobs / np.array([len(choice) for choice in item.choices])
        predicted, predicted_norm = int(logprobs.argmax()), int(normalized.argmax())
        correct += predicted == item.answer
        correct_norm += predicted_norm == item.answer
        predictions.append({"id": item.id, "gold": item.answer, "predicted": predicted,
                            "predicted_norm": predicted_norm, "logprobs": [round(float(v), 6) for v in logprobs]})
    return {"accuracy": correct / len(items), "acc_norm": correct_norm / len(items)}, predictions
