"""Multiple-choice tasks made from a dataset's held-out documents (``pretrain --eval-tasks heldout``): a downstream
signal for a base model on any corpus, with nothing to download.

- ``heldout_continuation`` (in the manner of HellaSwag, Zellers et al. 2019): a passage's next tokens against
  equally long passages of other documents;
- ``heldout_order`` (in the manner of BLiMP's minimal pairs, Warstadt et al. 2020): a passage's next words against
  the same words shuffled.

Both are four-way, so chance is 0.25. The items are a pure function of the documents and the seed. Spans are cut
at token boundaries and decoded after one token of their own document, so every choice starts the way the text it
was cut from continues (a leading space or none): how a choice begins tells nothing of which is right.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from lmkit.evaluation.choice import ChoiceItem
from lmkit.tokenizer import Tokenizer

SET_NAME = "heldout"
CHOICES = 4
CONTEXT_TOKENS = 32             # the passage each item starts from (at most half the model's window)
CONTINUATION_TOKENS = 16        # heldout_continuation: the span to pick (at most a quarter of the window)
ORDER_WORDS = 10                # heldout_order: the words to put back in order (fewer past half the window)


def tasks(documents: Sequence[Sequence[int]], tokenizer: Tokenizer, items: int, seed: int, window: int
          ) -> dict[str, list[ChoiceItem]]:
    """{task name: up to ``items`` items} from ``documents`` (token ids), for a model of ``window`` positions."""
    return {f"{SET_NAME}_continuation": continuation_items(documents, tokenizer, items, seed, window),
            f"{SET_NAME}_order": order_items(documents, tokenizer, items, seed, window)}


def _after(ids: Sequence[int], start: int, length: int, decode: Callable[[list[int]], str]) -> str:
    """The text of ``ids[start:start + length]`` as it reads after ``ids[start - 1]`` (start >= 1)."""
    lead = decode(list(ids[start - 1:start]))
    return decode(list(ids[start - 1:start + length]))[len(lead):]


def _passages(documents: Sequence[Sequence[int]], length: int, rng: random.Random) -> list[tuple[int, int]]:
    """(document, start) of every passage of ``length`` tokens the documents hold, side by side from each one's
    second token (a long document gives several), in a seeded random order."""
    found = [(index, 1 + k * length) for index, ids in enumerate(documents) for k in range((len(ids) - 1) // length)]
    rng.shuffle(found)
    return found


def continuation_items(documents: Sequence[Sequence[int]], tokenizer: Tokenizer, items: int, seed: int,
                       window: int = 1024) -> list[ChoiceItem]:
    rng, decode = random.Random(f"{seed}/continuation"), tokenizer.decode
    context_tokens, span = min(CONTEXT_TOKENS, window // 2), min(CONTINUATION_TOKENS, window // 4)
    passages = _passages(documents, context_tokens + span, rng)
    usable = sorted({index for index, _ in passages})
    if len(usable) < CHOICES:  # distractors come from other documents
        return []
    made = []
    for index, start in passages:
        if len(made) == items:
            break
        ids = documents[index]
        context = _after(ids, start, context_tokens, decode)
        choices = [_after(ids, start + context_tokens, span, decode)]
        for other in rng.sample([i for i in usable if i != index], CHOICES - 1):
            where = rng.randrange(1, len(documents[other]) - span + 1)
            choices.append(_after(documents[other], where, span, decode))
        if any(len(tokenizer.encode(choice)) > window // 2 for choice in choices):
            continue  # text a cut changes the tokens of (rare): it would not fit the window
        made.append(_shuffled(f"{SET_NAME}_continuation/{index}@{start}", context, choices, rng))
    return made


def order_items(documents: Sequence[Sequence[int]], tokenizer: Tokenizer, items: int, seed: int,
                window: int = 1024) -> list[ChoiceItem]:
    rng, decode = random.Random(f"{seed}/order"), tokenizer.decode
    context_tokens = min(CONTEXT_TOKENS, window // 2)
    made = []
    for index, start in _passages(documents, context_tokens + 3 * ORDER_WORDS, rng):
        if len(made) == items:
            break
        ids = documents[index]
        # Cut at words: the context is the whole words of its tokens, the words to put back in order the next ones
        # (a word takes one token or several, by the tokenizer).
        context_words = len(_after(ids, start, context_tokens, decode).split()) - 1
        words = _after(ids, start, context_tokens + 3 * ORDER_WORDS, decode).split()
        tail = words[context_words:context_words + ORDER_WORDS]
        while len(tail) > 4 and len(tokenizer.encode(" " + " ".join(tail))) > window // 2:
            tail.pop()
        # Four distinct orders, each within half the window (long words, URLs, code, may take many tokens).
        if len(set(tail)) < 4 or len(tokenizer.encode(" " + " ".join(tail))) > window // 2:
            continue
        choices = [" " + " ".join(tail)]
        while len(choices) < CHOICES:
            shuffled = " " + " ".join(rng.sample(tail, len(tail)))
            if shuffled not in choices:
                choices.append(shuffled)
        made.append(_shuffled(f"{SET_NAME}_order/{index}@{start}", " ".join(words[:context_words]), choices, rng))
    return made


def _shuffled(item_id: str, context: str, choices: list[str], rng: random.Random) -> ChoiceItem:
    """The item with its choices in a random order; choices[0] is the right one."""
    order = rng.sample(range(len(choices)), len(choices))
    return ChoiceItem(item_id, context, [choices[k] for k in order], order.index(0))
