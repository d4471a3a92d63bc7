"""Preference records for preference tuning (DPO, ORPO) and its evaluation: JSON Lines records of a prompt and two
replies to it, the ``chosen`` one preferred over the ``rejected`` one, each checked and refused in one line naming
the file and the line.

The prompt is a ``"prompt"`` text, or a conversation ending with the user's turn: a ``"messages"`` or ShareGPT
``"conversations"`` list (lmkit.data.conversations), or a ``"prompt"`` list of messages. The replies are texts,
or TRL's conversational form, lists of messages whose last is the assistant's reply: the turns before it (the same
in both) are the prompt when the record gives none (TRL's "implicit prompt"), and must equal it when it does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit.data.conversations import parse
from lmkit.data.jsonl import json_objects, read_text
from lmkit.errors import UserError

REPLIES = ("chosen", "rejected")
LAYOUT = ('a "prompt" (a text, or a conversation in "prompt", "messages" or "conversations" ending with the '
          'user\'s turn), a "chosen" and a "rejected" reply')

Prompt = str | list[dict[str, str]]  # as lmkit.generation.prompts.Prompt: a text, or a conversation to reply to


@dataclass(frozen=True)
class PreferencePair:
    """A prompt and two replies to it, ``chosen`` preferred over ``rejected``."""

    prompt: Prompt
    chosen: str
    rejected: str
    where: str          # FILE:LINE, for messages


def _reply(record: dict[str, Any], key: str, where: str) -> tuple[str, list[dict[str, str]]]:
    """A reply's text and the turns before it (TRL's conversational form; none for a text)."""
    value = record.get(key)
    if value is None:
        raise UserError(f"{where}: no \"{key}\" reply; a preference record holds {LAYOUT}")
    if isinstance(value, str):
        if not value.strip():
            raise UserError(f"{where}: \"{key}\" is empty")
        return value, []
    if not isinstance(value, list):
        raise UserError(f"{where}: \"{key}\" must be a text, or a list of messages ending with the assistant's reply")
    if not value:
        raise UserError(f"{where}: \"{key}\" is empty")
    messages = parse({"messages": value}, f"{where}: \"{key}\"").as_list()
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{where}: \"{key}\" ends with the {messages[-1]['role']}'s turn; its last message must be "
                        "the assistant's reply")
    return messages[-1]["content"], messages[:-1]


def _prompt(record: dict[str, Any], before: list[dict[str, str]], where: str) -> Prompt:
    """The record's prompt: its "prompt" text or conversation, else the turns the replies carry before them."""
    given: Prompt | None = None
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: \"prompt\" is empty")
        given = prompt
    elif isinstance(prompt, list):
        given = parse({"messages": prompt}, f"{where}: \"prompt\"", needs_reply=False).as_list()
    elif prompt is not None:
        raise UserError(f"{where}: \"prompt\" must be a text or a list of messages")
    elif isinstance(record.get("messages"), list) or isinstance(record.get("conversations"), list):
        given = parse(record, where, needs_reply=False).as_list()
    if given is None:
        if not before:
            raise UserError(f"{where}: no prompt; a preference record holds {LAYOUT}")
        if before[-1]["role"] != "user":
            raise UserError(f"{where}: the turns before the replies end with the {before[-1]['role']}'s turn; they "
                            "must end with the user's turn, for the replies to answer")
        return before
    if before and before != ([{"role": "user", "content": given}] if isinstance(given, str) else given):
        raise UserError(f"{where}: the turns before the replies differ from the prompt; give the prompt once")
    return given


def parse_pair(record: dict[str, Any], where: str) -> PreferencePair:
    """The preference pair of one JSON object, or the one-line refusal that names ``where``."""
    (chosen, chosen_before), (rejected, rejected_before) = (_reply(record, key, where) for key in REPLIES)
    if chosen_before != rejected_before:
        raise UserError(f"{where}: \"chosen\" and \"rejected\" differ before their final reply; both answer the "
                        "same prompt")
    if chosen.strip() == rejected.strip():
        raise UserError(f"{where}: \"chosen\" and \"rejected\" are the same reply: nothing to prefer")
    return PreferencePair(_prompt(record, chosen_before, where), chosen, rejected, where)


def read_preferences(path: str | Path, limit: int = 0) -> list[PreferencePair]:
    """The preference pairs of a JSONL file (the first ``limit``; 0: all); the first bad record stops the read."""
    pairs = []
    for where, record in json_objects(read_text(path), str(path), f"a JSON object with {LAYOUT}"):
        pairs.append(parse_pair(record, where))
        if limit and len(pairs) >= limit:
            break
    if not pairs:
        raise UserError(f"{path}: no preference records (each line: a JSON object with {LAYOUT})")
    return pairs


def looks_like_preferences(record: dict[str, Any] | None) -> bool:
    """Whether a JSONL file's first record holds a "chosen" and a "rejected" reply (finetune --task auto: dpo)."""
    return record is not None and all(key in record for key in REPLIES)
