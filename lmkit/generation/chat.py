"""A conversation with a chat model, turn by turn (``lmkit chat``): the history, rendered with the checkpoint's chat
template for each reply, its oldest exchanges dropped when it no longer leaves room for a reply in the context,
the reply streamed as it is generated, and the transcript as a JSONL conversation record (the layout finetune
--task chat and generate --messages read)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from lmkit.errors import UserError
from lmkit.generation.generator import Generator, Reply
from lmkit.generation.settings import SamplingSettings


class ChatSession:
    def __init__(self, generator: Generator, settings: SamplingSettings, system: str | None = None):
        """``system``: the system prompt (None: the one the checkpoint stores, if any); the generator is a chat
        model's (stages.chat.open_chat refuses others)."""
        self.generator, self.settings, self.system = generator, settings, system
        self.history: list[dict[str, str]] = []
        # The reply's room in the context: the history is cut to leave it (at most half the context).
        self.room = max(1, min(settings.max_new_tokens, generator.block_size // 2))

    @property
    def system_prompt(self) -> str | None:
        return self.system if self.system is not None else self.generator.chat.system

    def reply(self, text: str, on_text: Callable[[str], None] | None = None) -> tuple[Reply, int]:
        """The assistant's reply to the user's ``text`` (``on_text`` receives it as it grows) and how many of the
        oldest turns were dropped to make room; the exchange joins the history once the reply is complete."""
        if not text.strip():
            raise UserError("the message is empty")
        messages = [*self.history, {"role": "user", "content": text}]
        ids, dropped, rendered = self.generator.encode_messages(messages, "the conversation", self.system,
                                                                room=self.room)
        on_token = None if on_text is None else (lambda _index, piece: on_text(piece))
        (reply,) = self.generator.generate_ids([ids], [rendered], self.settings, on_token, names=["the reply"])
        self.history = [*messages[dropped:], {"role": "assistant", "content": reply.text}]
        return reply, dropped

    def reset(self) -> None:
        self.history = []

    def transcript(self) -> dict:
        """The conversation as one record of OpenAI's layout, the system turn first when there is one."""
        system = self.system_prompt
        return {"messages": ([{"role": "system", "content": system}] if system else []) + self.history}

    def save(self, path: str | Path) -> Path:
        """Append the transcript to ``path`` as one JSONL line (a file of such lines is chat training data)."""
        path = Path(path).expanduser()
        if path.is_dir():
            raise UserError(f"{path}: is a directory; give a file name")
        if not path.parent.is_dir():
            raise UserError(f"{path}: the directory {path.parent} does not exist")
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(self.transcript(), ensure_ascii=False) + "\n")
        return path
