"""Prompts with the records a reward scores their replies against (RL's training prompts, ``evaluate --task
pass-at-k``): read from JSONL, encoded as the checkpoint frames them (prompts.PromptFormat), and the replies'
text and reward."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmkit.data import conversations
from lmkit.data.jsonl import read_jsonl
from lmkit.errors import UserError
from lmkit.evaluation.rewards import Reward, Score
from lmkit.generation.prompts import PromptFormat
from lmkit.generation.text import CompletionText


@dataclass(frozen=True)
class RewardPrompt:
    """A prompt to reply to: where it is (``FILE:LINE``), as given (a text or a conversation), its record, its ids."""

    where: str
    prompt: Any
    record: dict
    ids: list[int]


def read_reward_prompts(path: str | Path, prompts: PromptFormat, reward: Reward, prompt_field: str,
                        max_tokens: int | None = None, limit: int = 0, flag: str = "--seq-len"
                        ) -> list[RewardPrompt]:
    """The file's prompts (at most ``limit``; 0: all): a text in ``prompt_field`` (a chat model reads it as the
    user's turn), or a "messages" conversation ending with the user's turn, for a chat model. A record is refused
    with its FILE:LINE when it lacks what ``reward`` compares with, or when its prompt leaves no room for a reply in
    the model's context or in ``max_tokens`` (named ``flag``)."""
    found = []
    for where, record in read_jsonl(path):
        if "messages" in record or "conversations" in record:
            prompt: Any = conversations.parse(record, where, needs_reply=False).as_list()
        else:
            prompt = record.get(prompt_field)
            if not isinstance(prompt, str) or not prompt.strip():
                what = "missing" if prompt is None else "empty or not a string"
                raise UserError(f"{where}: field {prompt_field!r} is {what} (every record needs a prompt, or "
                                "\"messages\" for a chat model; see --prompt-field)")
        reward.check_record(record, where)
        ids = prompts.encode_input(prompt, where)  # refuses a prompt longer than the model's context
        if max_tokens is not None and len(ids) >= max_tokens:
            raise UserError(f"{where}: the prompt is {len(ids)} tokens, no room for a reply within {flag} "
                            f"{max_tokens}; shorten it or raise {flag}")
        found.append(RewardPrompt(where, prompt, record, ids))
        if limit and len(found) >= limit:
            break
    if not found:
        raise UserError(f"{path}: no records")
    return found


def reply_text(prompts: PromptFormat, item: RewardPrompt, ids: list[int]) -> str:
    """A reply's text, decoded after its prompt's last token (its leading space kept)."""
    return CompletionText(prompts.tokenizer, item.ids[-1]).decode(ids)


def score_reply(prompts: PromptFormat, reward: Reward, item: RewardPrompt, ids: list[int]) -> Score:
    """The reward of the reply ``ids`` (without the stop id that ended it) to ``item``."""
    return reward.score(item.prompt, reply_text(prompts, item, ids), item.record, len(ids), item.where)
