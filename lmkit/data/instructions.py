"""Instruction/response records for supervised finetuning (SFT), and the prompt template.

A template is a string with one ``{prompt}`` placeholder. Finetuning stores it in the checkpoint
(model.json "template") so that generation wraps a user's prompt exactly as training did: the model
reads ``encode(render_prompt(template, prompt))`` and continues with the response, then ``</s>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmkit.data.jsonl import read_jsonl
from lmkit.errors import UserError
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import IGNORE_INDEX

# Alpaca's layout (Taori et al. 2023), without its preamble: short, and plain text for any tokenizer.
DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def render_prompt(template: str, prompt: str) -> str:
    """The model's input for ``prompt``: the template with ``{prompt}`` replaced (other braces stay)."""
    return template.replace("{prompt}", prompt)


@dataclass(frozen=True)
class InstructionExample:
    """``tokens`` = prompt (templated) + response + ``</s>``; the first ``prompt_length`` are the prompt."""

    tokens: list[int]
    prompt_length: int

    def targets(self) -> list[int]:
        """What position t predicts, for t < len(tokens) - 1: the response's tokens only (position t predicts
        token t + 1, so the first response token is predicted at prompt_length - 1)."""
        return [IGNORE_INDEX] * (self.prompt_length - 1) + self.tokens[self.prompt_length:]


def read_instructions(path: Path, tokenizer: Tokenizer, template: str, prompt_field: str, response_field: str,
                      max_tokens: int) -> tuple[list[InstructionExample], int]:
    """Instruction examples of a JSONL file and how many responses were cut to fit ``max_tokens``
    (prompt + response + ``</s>``). A broken record is refused with its line number."""
    examples, cut = [], 0
    for where, record in read_jsonl(path):
        for field in (prompt_field, response_field):
            value = record.get(field)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if value is None else "empty or not a string"
                flag = "--prompt-field" if field == prompt_field else "--response-field"
                raise UserError(f"{where}: field {field!r} is {what} (every record needs a {prompt_field} and a "
                                f"{response_field}; see {flag})")
        prompt = tokenizer.encode(render_prompt(template, record[prompt_field]))
        response = tokenizer.encode(record[response_field]) + [tokenizer.specials.eos]
        if len(prompt) >= max_tokens:
            raise UserError(f"{where}: the prompt alone is {len(prompt)} tokens, no room for a response within "
                            f"--seq-len {max_tokens - 1}; shorten it or raise --seq-len")
        if len(prompt) + len(response) > max_tokens:
            response = response[:max_tokens - len(prompt)]
            cut += 1
        examples.append(InstructionExample(prompt + response, len(prompt)))
    if not examples:
        raise UserError(f"{path}: no records")
    return examples, cut
