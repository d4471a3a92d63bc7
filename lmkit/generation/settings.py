"""Sampling settings of text generation, validated on creation, and the ``--stop`` flag's syntax.

Kept free of torch so that parsing flags and ``--help`` stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmkit.config import validate

# Escapes --stop understands: a stop string is often a newline, and the flag's list is comma-separated.
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", ",": ",", "\\": "\\"}


def parse_stop(text: str) -> tuple[str, ...]:
    """The stop strings of a ``--stop`` value: comma-separated, with the escapes \\n \\t \\r \\, and \\\\.

    Raises ValueError on an unknown escape or an empty stop string.
    """
    if not text:
        return ()
    stops, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == "\\":
            escaped = text[index + 1:index + 2]
            if escaped not in _ESCAPES:
                raise ValueError(f"unknown escape '\\{escaped}' (use \\n \\t \\r \\, or \\\\)")
            current.append(_ESCAPES[escaped])
            index += 2
            continue
        if char == ",":
            stops.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    stops.append("".join(current))
    if any(not stop for stop in stops):
        raise ValueError("empty stop string (two commas in a row, or a comma at an end?)")
    return tuple(stops)


@dataclass(frozen=True)
class SamplingSettings:
    """How the next token is chosen, and when generation stops.

    The logits pass through, in order (as in Hugging Face transformers): the repetition penalty,
    the temperature, top-k, top-p, then min-p; the token is drawn from what remains, renormalized.
    """

    max_new_tokens: int = 128      # new tokens at most, per prompt (fewer at </s>, a stop string or the context's end)
    temperature: float = 1.0       # divides the logits; 0 = greedy (always the most likely token)
    top_k: int = 0                 # keep the k most likely tokens (0 = all); ties with the k-th are kept
    top_p: float = 1.0             # nucleus (Holtzman et al. 2019): the fewest most likely tokens reaching p
    min_p: float = 0.0             # drop tokens less likely than min_p x the most likely one (Nguyen et al. 2024)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL, Keskar et al. 2019)
    stop: tuple[str, ...] = ()     # end a completion before the first of these strings (not included)
    # Each prompt's n-th copy in one call draws its own random stream, seeded by (seed, prompt text, n):
    # a prompt's text depends on the seed only, not on the other prompts batched with it.
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            problems.append(f"--stop: expected a tuple of strings, got {self.stop!r}")
        elif any(not s for s in self.stop):
            problems.append("--stop: a stop string must not be empty")
        if self.max_new_tokens < 1:
            problems.append(f"--max-new-tokens: must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also refuses NaN
            problems.append(f"--temperature: must be 0 (greedy) or positive, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"--top-k: must be 0 (off) or positive, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"--top-p: must be in (0, 1] (1 = off), got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            problems.append(f"--min-p: must be in [0, 1] (0 = off), got {self.min_p}")
        if not self.repetition_penalty > 0:
            problems.append(f"--repetition-penalty: must be positive (1 = off), got {self.repetition_penalty}")
        if self.seed < 0:
            problems.append(f"--seed: must not be negative, got {self.seed}")
        validate(self, problems)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
