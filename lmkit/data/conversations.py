"""Conversations for chat finetuning, evaluation and generation: JSON Lines records in OpenAI's layout
(``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}``) or ShareGPT's
(``{"conversations": [{"from": "system" | "human" | "gpt", "value": "..."}]}``), each checked and refused in one
line naming the file, the line and the turn (``--skip-bad-records`` counts them instead), then rendered with a
chat template and tokenized as the model will read them: the whole rendering at once, as transformers'
``apply_chat_template`` does, each token marked when it lies in an assistant turn (the loss mask).

Roles: system (at most one, first), user and assistant. Tool turns, function calls and other roles are refused:
a tool call needs a structured message a template renders in its own way, which lmkit does not train.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from lmkit.data.chat_template import ROLES, ChatFormat, assistant_spans, render
from lmkit.data.jsonl import first_record, read_text
from lmkit.errors import UserError
from lmkit.vocab import IGNORE_INDEX

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
LAYOUTS = 'an OpenAI "messages" list of {"role", "content"} or a ShareGPT "conversations" list of {"from", "value"}'


class BadConversation(UserError):
    """A record that is not a usable conversation (its message names the file, line and turn)."""


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]   # {"role", "content"}, roles among system, user, assistant
    where: str                             # FILE:LINE, for messages

    def as_list(self) -> list[dict[str, str]]:
        return [dict(message) for message in self.messages]


def _content(value: Any) -> str | None:
    """A turn's text: a string, or OpenAI's list of text parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(p, dict) and p.get("type") == "text"
                                                 and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return None


def parse(record: Any, where: str, needs_reply: bool = True) -> Conversation:
    """The conversation of one JSON record; ``needs_reply``: it must hold an assistant turn (training,
    evaluation), else it must end with the user's turn, to be answered (generation)."""
    if not isinstance(record, dict):
        raise BadConversation(f"{where}: expected a JSON object with {LAYOUTS}")
    if isinstance(record.get("messages"), list):
        turns, role_key, text_key, roles = record["messages"], "role", "content", {r: r for r in ROLES}
    elif isinstance(record.get("conversations"), list):
        turns, role_key, text_key, roles = record["conversations"], "from", "value", SHAREGPT_ROLES
    else:
        raise BadConversation(f"{where}: no conversation: expected {LAYOUTS}")
    if not turns:
        raise BadConversation(f"{where}: the conversation is empty")
    messages = []
    for number, turn in enumerate(turns, 1):
        at = f"{where}: turn {number}"
        if not isinstance(turn, dict):
            raise BadConversation(f"{at}: expected an object with \"{role_key}\" and \"{text_key}\"")
        role = turn.get(role_key)
        if role not in roles:
            known = ", ".join(roles)
            what = "no role" if role is None else f"unknown role {role!r}"
            hint = " (tool turns and function calls are not read: lmkit trains system, user and assistant turns)" \
                if role in ("tool", "function", "function_call", "observation", "ipython") else ""
            raise BadConversation(f"{at}: {what}; \"{role_key}\" must be one of {known}{hint}")
        content = _content(turn.get(text_key))
        if content is None:
            raise BadConversation(f"{at}: \"{text_key}\" must be a string (or a list of text parts)")
        if not content.strip():
            raise BadConversation(f"{at}: empty {roles[role]} turn")
        if roles[role] == "system" and number != 1:
            raise BadConversation(f"{at}: a system turn after the conversation started (one system turn, first)")
        messages.append({"role": roles[role], "content": content})
    if needs_reply and not any(m["role"] == "assistant" for m in messages):
        raise BadConversation(f"{where}: no assistant turn: nothing for the model to learn or to be scored on")
    if not needs_reply and messages[-1]["role"] != "user":
        raise BadConversation(f"{where}: turn {len(messages)}: the conversation must end with the user's turn, "
                              f"for the model to answer (it ends with the {messages[-1]['role']}'s turn)")
    return Conversation(tuple(messages), where)


def records(text: str, source: str) -> Iterator[tuple[str, Any]]:
    """(``SOURCE:LINE``, the decoded JSON or a BadConversation) of each non-blank line."""
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, BadConversation(f"{where}: not valid JSON ({exc.msg})")


@dataclass
class Skipped:
    """Records left out under --skip-bad-records: how many, and the first one's problem."""

    count: int = 0
    first: str | None = None

    def add(self, problem: UserError) -> None:
        self.count += 1
        self.first = self.first or str(problem)

    def note(self, what: str) -> str:
        return f"{self.count} bad {what} skipped (--skip-bad-records; the first: {self.first})"


def read(path: str | Path, skip_bad: bool = False, needs_reply: bool = True, skipped: Skipped | None = None,
         text: str | None = None, hint: str = "") -> list[Conversation]:
    """The conversations of a JSONL file (``text``: its content, already read, e.g. stdin); a bad record stops
    the read with its message (and ``hint``), or with ``skip_bad`` is counted in ``skipped``."""
    skipped = skipped if skipped is not None else Skipped()
    found = []
    for where, record in records(read_text(path) if text is None else text, str(path)):
        try:
            if isinstance(record, BadConversation):
                raise record
            found.append(parse(record, where, needs_reply))
        except BadConversation as exc:
            if not skip_bad:
                raise UserError(f"{exc}{hint}") from None
            skipped.add(exc)
    if not found:
        raise UserError(f"{path}: no conversations" + (f" ({skipped.note('records')})" if skipped.count else ""))
    return found


def looks_like_conversations(path: str | Path) -> bool:
    """Whether the first record of a JSONL file holds a "messages" or "conversations" list (finetune --task auto)."""
    record = first_record(path)
    return record is not None and any(isinstance(record.get(key), list) for key in ("messages", "conversations"))


# -- tokenizing -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChatExample:
    """A conversation's tokens; ``trained[t]``: token t is the assistant's (its loss counts)."""

    tokens: list[int]
    trained: list[bool]
    where: str

    def targets(self) -> list[int]:
        """What position t predicts, for t < len(tokens) - 1: token t + 1 when it is the assistant's."""
        return [token if keep else IGNORE_INDEX for token, keep in zip(self.tokens[1:], self.trained[1:], strict=True)]


def tokenize(conversation: Conversation, chat: ChatFormat, tokenizer, last_turn_only: bool = False) -> ChatExample:
    """The conversation rendered and tokenized at once, each token marked when it overlaps an assistant turn
    (all of them, or with ``last_turn_only`` the last): the rule of transformers' assistant mask."""
    text, spans = assistant_spans(chat, chat.with_system(conversation.as_list()), conversation.where)
    if last_turn_only:
        spans = spans[-1:]
    ids, offsets = tokenizer.encode_chat_offsets(text)
    trained, span = [], 0
    for start, end in offsets:
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        # A token covering no character (SentencePiece's dummy prefix after a special token) counts where it is.
        if span == len(spans):
            trained.append(False)
            continue
        trained.append(end > spans[span][0] if end > start else start >= spans[span][0])
    return ChatExample(ids, trained, conversation.where)


def prompt_ids(conversation: list[dict[str, str]], chat: ChatFormat, tokenizer, where: str,
               system: str | None = None) -> list[int]:
    """The model's input for the reply to ``conversation``: its rendering with the generation prompt, tokenized
    as in training."""
    return tokenizer.encode_chat(render(chat, chat.with_system(conversation, system), True, where))


def end_of_turn(chat: ChatFormat, tokenizer, where: str) -> int | None:
    """The token that closes an assistant turn in ``chat``'s template: the first special token of the assistant's
    span after its text, in a probe conversation; None when the template writes none (it cannot stop a reply)."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text, spans = assistant_spans(chat, probe, where)
    ids, offsets = tokenizer.encode_chat_offsets(text)
    start, end = spans[-1]
    reply_end = text.index("Hello", start) + len("Hello")
    special = tokenizer.specials.ids
    return next((token for token, (a, b) in zip(ids, offsets, strict=True)
                 if a >= reply_end and b <= end and token in special), None)
