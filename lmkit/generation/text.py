"""From generated ids to text: incremental decoding for streaming, and stop strings cut exactly.

SentencePiece decodes a piece sequence with two surprises for a continuation: the leading space of
the first piece is dropped ("▁the" alone decodes to "the"), and a character spelled in byte pieces
decodes to U+FFFD replacement characters until its last byte arrives. So a completion is decoded
behind an anchor (the prompt's last token), keeping its leading space, and text ending in U+FFFD or
in what may be the start of a stop string is held back from streaming until it is settled.
"""

from __future__ import annotations

from typing import Callable

from lmkit.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many final characters of ``text`` may still change or vanish: trailing U+FFFD (an unfinished
    UTF-8 character), or the longest ending that is the beginning of a stop string."""
    keep = len(text) - len(text.rstrip(REPLACEMENT))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                keep = max(keep, size)
                break
    return keep


def cut_at_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string begins in ``text`` (the earliest of all), or None."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


class CompletionText:
    """The text of one completion as its ids grow: ``update(ids)`` after each token; ``text`` is the
    completion so far (cut before a stop string once one appears); ``on_text`` receives each settled
    increment, and their concatenation is exactly the final ``text``."""

    def __init__(self, tokenizer: Tokenizer, anchor: int, stops: tuple[str, ...] = (),
                 on_text: Callable[[str], None] | None = None):
        self.tokenizer, self.anchor, self.stops, self.on_text = tokenizer, anchor, stops, on_text
        self.anchor_text = tokenizer.decode([anchor])
        self.text = ""
        self.stopped = False
        self.shown = 0  # characters passed to on_text

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode([self.anchor, *ids])
        if text.startswith(self.anchor_text):
            return text[len(self.anchor_text):]
        return self.tokenizer.decode(ids)  # not expected with SentencePiece; never wrong text, at worst no space

    def update(self, ids: list[int]) -> bool:
        """Decode the ids generated so far; True once a stop string has appeared."""
        text = self.decode(ids)
        cut = cut_at_stop(text, self.stops)
        if cut is not None:
            text, self.stopped = text[:cut], True
        self.text = text
        if not self.stopped:
            self._show(len(text) - held_back(text, self.stops))
        return self.stopped

    def finish(self) -> str:
        """The final text; what was held back is shown now."""
        self._show(len(self.text))
        return self.text

    def _show(self, upto: int) -> None:
        if self.on_text is not None and upto > self.shown:
            self.on_text(self.text[self.shown:upto])
            self.shown = upto
