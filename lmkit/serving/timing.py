"""What one request of ``lmkit serve`` spent, measured in the HTTP layer: the ``timings`` object of every model
route's answer (the last event of a stream carries it), and what /metrics observes (metrics.py).

Its shape follows llama.cpp's server's ``timings``: milliseconds and token counts, a field that does not apply
to the route being null (``first_token_ms`` of a classification). The engine does not say when a job leaves its
queue, so the wait for the model is inside ``first_token_ms`` (and ``total_ms``), not a field of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Timing:
    """Clock readings (``time.perf_counter``) and token counts of one request."""

    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None     # when the first generated text came (decoding routes)
    last_token: float | None = None      # when the decode ended
    steps: int = 0                       # tokens decoded after the first (the longest sample's)
    finished: float | None = None        # when the answer was complete
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def token(self) -> None:
        """A piece of generated text came (from the engine's worker thread): the first one is kept."""
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def decoded(self, longest: int) -> None:
        """The decode ended; its longest sample has ``longest`` new tokens."""
        self.last_token = time.perf_counter()
        if self.first_token is None:  # no text came (an immediate end of text, or a stop string held it back)
            self.first_token = self.last_token
        self.steps = max(longest - 1, 0)

    def finish(self) -> None:
        if self.finished is None:
            self.finished = time.perf_counter()

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    @property
    def time_per_output_token(self) -> float | None:
        """Seconds per token after the first (vLLM's TPOT); None without a second token."""
        if self.last_token is None or self.steps < 1:
            return None
        return (self.last_token - self.first_token) / self.steps

    def report(self) -> dict[str, Any]:
        """The ``timings`` object of an answer."""
        def ms(seconds: float | None) -> float | None:
            return None if seconds is None else round(seconds * 1000, 3)

        self.finish()
        decode = None if self.last_token is None else self.last_token - self.first_token
        return {"first_token_ms": ms(self.time_to_first_token), "decode_ms": ms(decode),
                "per_token_ms": ms(self.time_per_output_token), "total_ms": ms(self.finished - self.started),
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}
