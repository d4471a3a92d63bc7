"""Document quality filters in the spirit of Gopher and C4: each one is a named, switchable rule
with a documented threshold, evaluated in a fixed order so the reported reason is reproducible.

==============  ===========================================================  =========  ======
name            the document is dropped when                                 default    source
==============  ===========================================================  =========  ======
too_short       it has fewer than ``min_chars`` characters                   20         lmkit
too_long        it has more than ``max_chars`` characters                    1000000    lmkit
few_words       it has fewer than ``min_words`` words (see ``word_count``)   3          C4
symbols         count of "#", "..." and "…", divided by the word count,      0.1        Gopher
                > ``max_symbol_ratio``
repeated_lines  non-empty lines equal to an earlier line, as a fraction of   0.3        Gopher
                non-empty lines, > ``max_repeated_line_fraction``
non_alpha       words containing a letter, as a fraction of words,           0.6        Gopher
                < ``min_alpha_word_fraction``
==============  ===========================================================  =========  ======

Sources: Gopher is Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
Training Gopher", appendix A (quality filters and repetition removal); C4 is Raffel et al. 2020,
"Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer", section 2.2
(C4 asks for at least 3 words per line; we apply the count to the whole document). The character
bounds are lmkit's own: too_short drops empty and stub records, too_long bounds the memory one
document may take in a worker.

Every threshold is inclusive on the keep side: a document exactly at a threshold is kept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lmkit.errors import ConfigError, UserError


@dataclass(frozen=True)
class FilterThresholds:
    """Thresholds of the quality filters; each field belongs to the filter named in its comment."""

    min_chars: int = 20  # too_short: fewer characters than this is dropped
    max_chars: int = 1_000_000  # too_long: more characters than this is dropped
    min_words: int = 3  # few_words: fewer words than this is dropped
    # symbols: ("#" + "..." + "…") per word above this is dropped. Gopher uses 0.1, for the hash
    # and the ellipsis separately; we count them together, which is slightly stricter.
    max_symbol_ratio: float = 0.1
    # repeated_lines: Gopher drops documents whose duplicate-line fraction exceeds 0.3.
    max_repeated_line_fraction: float = 0.3
    # non_alpha: Gopher keeps web text with >= 80% of words containing a letter; 0.6 keeps
    # technical prose full of numbers, identifiers and formulas.
    min_alpha_word_fraction: float = 0.6

    def __post_init__(self) -> None:
        problems = []
        if self.min_chars < 0:
            problems.append(f"min_chars must be >= 0, got {self.min_chars}")
        if self.max_chars < self.min_chars:
            problems.append(
                f"max_chars ({self.max_chars}) must be >= min_chars ({self.min_chars})"
            )
        if self.min_words < 0:
            problems.append(f"min_words must be >= 0, got {self.min_words}")
        if self.max_symbol_ratio < 0:
            problems.append(f"max_symbol_ratio must be >= 0, got {self.max_symbol_ratio}")
        for name in ("max_repeated_line_fraction", "min_alpha_word_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be between 0 and 1, got {value}")
        if problems:
            raise ConfigError(problems)


# Scripts written without spaces between words: one character is one word, so that a Chinese
# or Japanese document is not taken for a single word. Hangul syllables are counted the same way
# (Korean does use spaces, so this over-counts Korean words, which only errs towards keeping).
_CJK_RANGES = (
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK unified ideographs extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # Half-width katakana
    "\U00020000-\U0003134f"  # CJK extensions B-G and compatibility supplement
)
_has_letter = re.compile(r"[^\W\d_]").search  # a letter (or another non-digit alphanumeric)
_WORD = re.compile(f"[{_CJK_RANGES}]|[^\\s{_CJK_RANGES}]+")
CJK = re.compile(f"[{_CJK_RANGES}]")  # a character that is a word of its own (split_words)
_ASCII_NEITHER_LETTER_NOR_SPACE = bytes(c for c in range(128) if not chr(c).isalpha() and not chr(c).isspace())
# A whitespace-separated word made only of characters that are not letters ([^\W\d_]) nor whitespace.
_WORD_WITHOUT_LETTER = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")


@functools.lru_cache(maxsize=4)  # several filters ask about the same document in a row
def _without_cjk(text: str) -> bool:
    return text.isascii() or CJK.search(text) is None


@functools.lru_cache(maxsize=4)
def _words(text: str) -> tuple[str, ...]:
    if _without_cjk(text):  # the words are the whitespace runs, which str.split finds 5x faster
        return tuple(text.split())  # (str.isspace and the regex's \s are the same characters)
    return tuple(_WORD.findall(text))


def split_words(text: str) -> list[str]:
    """Whitespace-separated words, with each CJK ideograph, kana or Hangul syllable on its own."""
    return list(_words(text))


def word_count(text: str) -> int:
    """Number of ``split_words`` words: "東京 tower" has 3."""
    return len(_words(text))


def _long_enough(text: str, thresholds: FilterThresholds) -> bool:
    return len(text) >= thresholds.min_chars


def _short_enough(text: str, thresholds: FilterThresholds) -> bool:
    return len(text) <= thresholds.max_chars


def _enough_words(text: str, thresholds: FilterThresholds) -> bool:
    return word_count(text) >= thresholds.min_words


def _few_symbols(text: str, thresholds: FilterThresholds) -> bool:
    # Hash marks and ellipses flag lists of tags and truncated snippets (Gopher, appendix A).
    symbols = text.count("#") + text.count("...") + text.count("\u2026")
    if symbols == 0:
        return True
    words = word_count(text)
    return words > 0 and symbols / words <= thresholds.max_symbol_ratio


def _few_repeated_lines(text: str, thresholds: FilterThresholds) -> bool:
    # Repeated lines mark boilerplate: menus, cookie banners, "read more" (Gopher, table A1).
    seen: set[str] = set()
    lines = repeats = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        lines += 1
        if line in seen:
            repeats += 1
        else:
            seen.add(line)
    return lines == 0 or repeats / lines <= thresholds.max_repeated_line_fraction


def _mostly_alphabetic(text: str, thresholds: FilterThresholds) -> bool:
    # Few words with letters means tables of numbers, code dumps or encoded data (Gopher).
    words = _words(text)
    if not words:
        return True  # nothing to judge; few_words is the filter for empty documents
    if text.isascii():  # delete what is neither a letter nor whitespace: the words left are those with a letter
        alphabetic = len(text.encode("ascii").translate(None, _ASCII_NEITHER_LETTER_NOR_SPACE).decode().split())
    elif _without_cjk(text):  # count the words without a letter in one regex pass, not a search per word
        alphabetic = len(words) - len(_WORD_WITHOUT_LETTER.findall(text))
    else:
        alphabetic = sum(1 for word in words if _has_letter(word))
    return alphabetic / len(words) >= thresholds.min_alpha_word_fraction


@dataclass(frozen=True)
class Filter:
    """One quality rule. ``check`` returns True to KEEP the document."""

    name: str
    description: str  # one line, shown by --help and in the docs
    check: Callable[[str, FilterThresholds], bool]


def _registry(*filters: Filter) -> dict[str, Filter]:
    registry: dict[str, Filter] = {}
    for item in filters:
        if item.name in registry:
            raise ValueError(f"filter {item.name!r} registered twice")
        registry[item.name] = item
    return registry


FILTERS: dict[str, Filter] = _registry(
    Filter("too_short", "drop documents shorter than min_chars characters", _long_enough),
    Filter("too_long", "drop documents longer than max_chars characters", _short_enough),
    Filter("few_words", "drop documents with fewer than min_words words", _enough_words),
    Filter(
        "symbols",
        'drop documents with more than max_symbol_ratio "#", "..." or "…" per word',
        _few_symbols,
    ),
    Filter(
        "repeated_lines",
        "drop documents whose non-empty lines repeat earlier ones more than "
        "max_repeated_line_fraction of the time",
        _few_repeated_lines,
    ),
    Filter(
        "non_alpha",
        "drop documents where under min_alpha_word_fraction of words contain a letter",
        _mostly_alphabetic,
    ),
)
"""All quality filters, in evaluation order."""


def validate_filter_names(names: Iterable[str]) -> None:
    """Raise ``UserError`` naming every unknown filter and listing the valid ones."""
    unknown = [name for name in names if name not in FILTERS]
    if unknown:
        listed = ", ".join(repr(name) for name in unknown)
        raise UserError(
            f"unknown quality filter {listed}: valid filters are {', '.join(FILTERS)}"
        )


def first_failing_filter(
    text: str, enabled: Iterable[str], thresholds: FilterThresholds
) -> str | None:
    """Name of the first enabled filter, in ``FILTERS`` order, that drops ``text``; None keeps it.

    The order of ``enabled`` does not matter, so the reported reason is the same for every run.
    """
    for rule in _enabled_filters(tuple(enabled)):
        if not rule.check(text, thresholds):
            return rule.name
    return None


# first_failing_filter runs per document: validate each set of names once, not per document.
@functools.lru_cache(maxsize=32)
def _enabled_filters(names: tuple[str, ...]) -> tuple[Filter, ...]:
    """The named filters in ``FILTERS`` order; unknown names raise ``UserError`` (never cached)."""
    validate_filter_names(sorted(set(names)))
    return tuple(rule for name, rule in FILTERS.items() if name in names)
