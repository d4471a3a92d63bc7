"""Quality filters: each threshold from both sides, each switch, evaluation order, CJK words."""

from __future__ import annotations

import pytest

from lmkit.data import filters
from lmkit.data.filters import (
    FILTERS,
    FilterThresholds,
    first_failing_filter,
    validate_filter_names,
    word_count,
)
from lmkit.errors import ConfigError, UserError

DEFAULTS = FilterThresholds()
ALL = tuple(FILTERS)


def all_but(name: str) -> list[str]:
    return [other for other in ALL if other != name]


def _words(n: int) -> list[str]:
    return [f"word{chr(ord('a') + i % 26)}" for i in range(n)]


# One (kept, dropped, thresholds) case per filter, each right at / just past its threshold, and
# each dropped document fails only its own filter, so disabling that filter keeps it.
CASES = {
    "too_short": (
        "one two three four x",  # exactly 20 characters
        "one two three fourx",  # 19
        DEFAULTS,
    ),
    "too_long": (
        "a" * 96 + " b c",  # exactly 100 characters
        "a" * 97 + " b c",  # 101
        FilterThresholds(max_chars=100),
    ),
    "few_words": (
        "supercalifragilistic wordsmithing again",  # 3 words
        "supercalifragilistic wordsmithing",  # 2 words
        DEFAULTS,
    ),
    "symbols": (
        # 30 words, 3 with a symbol: ratio 0.1, kept.
        " ".join(["#tag", "wait...", "then…"] + _words(27)),
        # 30 words, 4 symbols of all three kinds: ratio 0.133, dropped.
        " ".join(["#tag", "#more", "wait...", "then…"] + _words(26)),
        DEFAULTS,
    ),
    "repeated_lines": (
        # 10 non-empty lines, 3 repeat an earlier one: 0.3, kept. Blank lines do not count.
        "\n".join([f"line number {i}" for i in range(7)] + ["line number 0"] * 3 + ["", "", ""]),
        # 10 non-empty lines, 4 repeats: 0.4, dropped.
        "\n".join([f"line number {i}" for i in range(6)] + ["line number 1"] * 4),
        DEFAULTS,
    ),
    "non_alpha": (
        "alpha beta gamma delta epsilon 6e 1 22 333 4.5",  # 6 of 10 words have a letter: 0.6
        "alpha beta gamma delta epsilon 67 1 22 333 4.5",  # 5 of 10: 0.5
        DEFAULTS,
    ),
}


def test_cases_cover_every_filter():
    assert set(CASES) == set(FILTERS)


def test_case_sizes_are_what_the_comments_say():
    assert len(CASES["too_short"][0]) == 20 and len(CASES["too_short"][1]) == 19
    assert len(CASES["too_long"][0]) == 100 and len(CASES["too_long"][1]) == 101
    assert word_count(CASES["symbols"][0]) == 30 == word_count(CASES["symbols"][1])


@pytest.mark.parametrize("name", ALL)
def test_document_at_threshold_is_kept(name):
    kept, _, thresholds = CASES[name]
    assert FILTERS[name].check(kept, thresholds)
    assert first_failing_filter(kept, ALL, thresholds) is None


@pytest.mark.parametrize("name", ALL)
def test_document_past_threshold_is_dropped_by_that_filter(name):
    _, dropped, thresholds = CASES[name]
    assert not FILTERS[name].check(dropped, thresholds)
    assert first_failing_filter(dropped, ALL, thresholds) == name


@pytest.mark.parametrize("name", ALL)
def test_disabled_filter_does_not_drop(name):
    _, dropped, thresholds = CASES[name]
    assert first_failing_filter(dropped, all_but(name), thresholds) is None


def test_symbol_ratio_follows_threshold():
    _, dropped, _ = CASES["symbols"]
    assert first_failing_filter(dropped, ["symbols"], FilterThresholds(max_symbol_ratio=0.2)) is None


def test_filters_run_in_registry_order_whatever_the_enabled_order():
    text = "hi"  # too short and too few words
    assert first_failing_filter(text, ["few_words", "too_short"], DEFAULTS) == "too_short"
    assert first_failing_filter(text, ["few_words"], DEFAULTS) == "few_words"
    assert first_failing_filter(text, [], DEFAULTS) is None


def test_registry_order():
    assert ALL == ("too_short", "too_long", "few_words", "symbols", "repeated_lines", "non_alpha")
    assert all(rule.description and "\n" not in rule.description for rule in FILTERS.values())


# --- words -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("", 0),
        ("  plain   English\ttext \n here ", 4),
        ("東京は日本の首都です", 10),
        ("カタカナとひらがな", 9),
        ("안녕하세요", 5),
        ("東京 tower", 3),
        ("AI模型很大", 5),
    ],
)
def test_word_count(text, count):
    assert word_count(text) == count


def test_cjk_document_is_not_one_word():
    text = "自然言語処理は人工知能の一分野です。"
    assert first_failing_filter(text, ALL, FilterThresholds(min_chars=5)) is None


# --- bad input -------------------------------------------------------------------------------


def test_unknown_filter_name_message():
    with pytest.raises(UserError) as raised:
        validate_filter_names(["too_short", "tooshort"])
    message = str(raised.value)
    assert "'tooshort'" in message and "\n" not in message
    assert all(name in message for name in ALL)


def test_first_failing_filter_rejects_unknown_names():
    with pytest.raises(UserError, match="'symbol'"):
        first_failing_filter("some text here", ["symbol"], DEFAULTS)



def test_filter_names_are_validated_once_per_set_not_per_document(monkeypatch):
    calls = []

    def counting(names):
        calls.append(tuple(names))
        validate_filter_names(names)

    monkeypatch.setattr(filters, "validate_filter_names", counting)
    filters._enabled_filters.cache_clear()
    try:
        for _ in range(100):
            assert first_failing_filter("some text here", ["symbols", "few_words"], DEFAULTS) is None
        assert calls == [("few_words", "symbols")]
        for _ in range(3):  # unknown names are never remembered as valid
            with pytest.raises(UserError, match="'symbol'"):
                first_failing_filter("some text here", ["symbol"], DEFAULTS)
        assert len(calls) == 4
    finally:
        filters._enabled_filters.cache_clear()

def test_bad_thresholds_reported_together():
    with pytest.raises(ConfigError) as raised:
        FilterThresholds(max_chars=5, min_alpha_word_fraction=1.5)
    assert len(raised.value.problems) == 2


# The fast paths for text without CJK (str.split, one regex pass for letterless words) against the
# general definitions: the regex's words and a letter search per word.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_MIXED = st.text(alphabet=st.sampled_from(list("ab Z9_-.#…é\u0301ß \t\n\u00a0\u2003\x1c東京ｱ한1٣²—🙂\udcff")),
                 max_size=60)


@settings(max_examples=300, deadline=None)
@given(_MIXED)
def test_words_and_letterless_words_match_their_definitions(text):
    words = filters._WORD.findall(text)
    assert filters.split_words(text) == words
    alphabetic = sum(1 for word in words if filters._has_letter(word))
    thresholds = FilterThresholds(min_alpha_word_fraction=0.5)
    expected = not words or alphabetic / len(words) >= 0.5
    assert filters._mostly_alphabetic(text, thresholds) is expected
