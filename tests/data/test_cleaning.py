"""clean_text and html_to_text: normalization, control characters, whitespace, HTML, idempotence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.data import cleaning
from lmkit.data.cleaning import NORMALIZATIONS, clean_text, html_to_text
from lmkit.errors import UserError

# --- Unicode normalization -------------------------------------------------------------------


def test_nfc_keeps_compatibility_characters_nfkc_folds_them():
    text = "ﬁne １２３"  # U+FB01 ligature, full-width digits
    assert clean_text(text, normalization="NFC") == "ﬁne １２３"
    assert clean_text(text, normalization="NFKC") == "fine 123"


def test_nfc_composes_combining_marks_and_none_leaves_them():
    decomposed = "cafe\u0301"
    assert clean_text(decomposed, normalization="NFC") == "caf\u00e9"
    assert clean_text(decomposed, normalization="none") == decomposed


def test_normalization_is_checked_once_per_value_not_per_document():
    cleaning._check_normalization.cache_clear()
    for _ in range(100):
        clean_text("text", normalization="NFKC")
    assert cleaning._check_normalization.cache_info().misses == 1
    for _ in range(3):  # a bad value is never remembered as checked
        with pytest.raises(UserError):
            clean_text("text", normalization="NFD")


def test_unknown_normalization_is_a_user_error_listing_choices():
    with pytest.raises(UserError) as raised:
        clean_text("text", normalization="NFD")
    message = str(raised.value)
    assert "'NFD'" in message and all(name in message for name in NORMALIZATIONS)


# --- control and format characters -----------------------------------------------------------


def test_control_characters_removed():
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x9ff") == "abcdef"


def test_whitespace_control_characters_become_spaces_not_glue():
    # Form feed and vertical tab separate words; removing them would join "page1page2".
    assert clean_text("page1\x0cpage2\x0bend\x85x") == "page1 page2 end x"


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_zero_width_joiner_emoji_survive(normalization):
    technologist = "\U0001f469\u200d\U0001f4bb"  # woman + ZWJ + laptop
    text = f"coding {technologist} today"
    assert clean_text(text, normalization=normalization) == text


def test_control_char_between_base_and_mark_still_gives_nfc():
    # Removing the NUL brings "e" and U+0301 together; they must end up composed.
    assert clean_text("e\x00\u0301") == "\u00e9"


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_cjk_untouched(normalization):
    text = "日本語のテキストです。\n한국어 문장입니다.\n中文句子。"
    assert clean_text(text, normalization=normalization) == text


# --- whitespace ------------------------------------------------------------------------------


def test_unicode_spaces_and_tabs_become_single_spaces():
    assert clean_text("a\u00a0b\u3000c\u2009d\t\te  f") == "a b c d e f"


def test_leading_indentation_kept_trailing_spaces_removed():
    code = "def f(x):\n    if x:\n        return  x   \n\treturn 0"
    assert clean_text(code) == "def f(x):\n    if x:\n        return x\n return 0"


def test_line_endings_normalized():
    assert clean_text("one\r\ntwo\rthree\n") == "one\ntwo\nthree"


def test_blank_line_runs_collapse_to_one_blank_line():
    assert clean_text("a\n\n\n\n\nb\n \n\t\n  \nc\n\nd") == "a\n\nb\n\nc\n\nd"


def test_leading_and_trailing_blank_lines_removed_first_indent_kept():
    assert clean_text("\n \n\n   indented\nnext\n\n  \n") == "   indented\nnext"


def test_whitespace_only_text_becomes_empty():
    assert clean_text(" \n\t\u3000\r\n ") == ""



@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_sentencepiece_space_marker_becomes_a_space(normalization):
    # SentencePiece reads U+2581 as a space, so it could not survive a round trip anyway.
    assert clean_text("a\u2581b", normalization=normalization) == "a b"
    assert clean_text("a \u2581\u2581 b\u2581\nc", normalization=normalization) == "a b\nc"
    # Leading ones are indentation, like leading spaces.
    assert clean_text("\u2581\u2581x", normalization=normalization) == "  x"

# --- HTML ------------------------------------------------------------------------------------

PAGE = """<!DOCTYPE html>
<html>
  <head><title>Title bar</title><style>p { color: red }</style></head>
  <body>
    <script>var hidden = "<p>not text</p>";</script>
    <noscript>enable javascript</noscript>
    <h1>Fish &amp; chips</h1>
    <p>Served   hot,
       with <b>salt</b> &lt;and&gt; vinegar&nbsp;&#233;.</p>
    <ul><li>one</li><li>two</li></ul>
    <p>line<br>break</p>
    <table><tr><td>cell a</td><td>cell b</td></tr><tr><td>c</td><td>d</td></tr></table>
    <pre>def f():
    return 1</pre>
  </body>
</html>"""


def test_html_to_text_drops_hidden_content_and_keeps_blocks_on_lines():
    text = clean_text(PAGE, strip_html=True)
    assert text.split("\n") == [
        "Fish & chips",
        "Served hot, with salt <and> vinegar é.",
        "one",
        "two",
        "line",
        "break",
        "cell a cell b",
        "c d",
        "def f():",
        "    return 1",
    ]


def test_html_to_text_raw_output():
    assert html_to_text("<p>a</p><p>b <i>c</i>d</p>") == "a\nb cd\n"
    assert html_to_text("x<br><br>y") == "x\n\ny"


def test_unclosed_head_does_not_swallow_body():
    assert clean_text("<head><title>t</title><body><p>visible</p>", strip_html=True) == "visible"


def test_strip_html_off_keeps_markup():
    assert clean_text("<p>a &amp; b</p>") == "<p>a &amp; b</p>"


# --- idempotence -----------------------------------------------------------------------------

# Characters that stress every rule: whitespace of all kinds, controls, combining marks that
# compose with neighbours, compatibility characters, Hangul jamo, ZWJ, markup.
_TRICKY = list(
    " \t\n\r\x00\x0b\x0c\x1f\x85\u00a0\u2028\u3000e\u0301\u0308\u00a8\ufb01\uff11a"
    "\u1100\u1161\u11a8\u200d\u2581<>&;/p"
)
_texts = st.one_of(st.text(), st.text(alphabet=st.sampled_from(_TRICKY)))


@settings(max_examples=150, deadline=None)
@given(text=_texts, normalization=st.sampled_from(NORMALIZATIONS))
def test_clean_text_is_idempotent(text, normalization):
    once = clean_text(text, normalization=normalization)
    assert clean_text(once, normalization=normalization) == once


@settings(max_examples=75, deadline=None)
@given(text=_texts, normalization=st.sampled_from(NORMALIZATIONS))
def test_cleaned_html_is_stable_under_plain_cleaning(text, normalization):
    once = clean_text(text, normalization=normalization, strip_html=True)
    assert clean_text(once, normalization=normalization) == once


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(_TRICKY + list("  \n\n\n  x"))))
def test_whitespace_tidying_skips_only_substitutions_with_nothing_to_do(text):
    # clean_text tests for each substitution's work before running it; running all four always is the definition.
    text = text.replace("\r", "\n").translate(cleaning._CONTROL_TABLE)  # what _tidy_whitespace is given
    expected = cleaning._OTHER_WHITESPACE.sub(" ", text)
    expected = cleaning._INNER_SPACE_RUN.sub(" ", expected)
    expected = cleaning._TRAILING_SPACES.sub("", expected)
    expected = cleaning._EXTRA_NEWLINES.sub("\n\n", expected).strip("\n")
    assert cleaning._tidy_whitespace(text) == expected
