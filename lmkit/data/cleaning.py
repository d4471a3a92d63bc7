"""Text cleaning before tokenization: optional HTML stripping, Unicode normalization, control
character removal and whitespace tidying, so that the same text always reaches the tokenizer in
the same form.

``clean_text`` is idempotent: cleaning cleaned text changes nothing. It also turns U+2581 ("▁")
into a plain space: SentencePiece escapes spaces as that meta symbol and decodes it back to a
space (Kudo & Richardson 2018, "SentencePiece", section 3.1), so text holding it would not survive
encode/decode unchanged; replacing it here keeps the cleaned text equal to what decoding returns.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from html.parser import HTMLParser

from lmkit.errors import UserError

NORMALIZATIONS = ("NFC", "NFKC", "none")
"""Accepted values of ``normalization``. NFC only composes (lossless); NFKC also folds
compatibility characters (ligatures, full-width digits, superscripts), which merges look-alike
tokens at the price of losing those distinctions."""


def _control_table() -> dict[int, str | None]:
    """Translation table for category Cc, except newline and tab.

    Control characters that Python counts as whitespace (form feed, vertical tab, the
    information separators, NEL) become a space rather than vanishing, so that "page1\\fpage2"
    does not glue two words together; the whitespace step then treats that space like any other.
    Format characters (Cf) are not touched: the zero-width joiner inside emoji sequences and
    the joiners of Indic and Persian scripts are Cf.
    """
    table: dict[int, str | None] = {}
    for codepoint in range(0xA0):  # Cc is exactly U+0000-U+001F and U+007F-U+009F
        char = chr(codepoint)
        if unicodedata.category(char) != "Cc" or char in "\n\t":
            continue
        table[codepoint] = " " if char.isspace() else None
    return table


_CONTROL_TABLE = _control_table()
# str.translate walks every character through a dict; a regex scan finds the rare text that needs it.
_ANY_CONTROL = re.compile("[" + "".join(re.escape(chr(c)) for c in _CONTROL_TABLE) + "]")
# Every Unicode whitespace character (re's \s is str.isspace) except newline and plain space.
_OTHER_WHITESPACE = re.compile(r"[^\S\n ]")
# A run of spaces that follows a visible character: inside a line, never leading indentation.
_INNER_SPACE_RUN = re.compile(r"(?<=[^ \n]) {2,}")
_TRAILING_SPACES = re.compile(r" +$", re.MULTILINE)
_EXTRA_NEWLINES = re.compile(r"\n{3,}")
_SENTENCEPIECE_SPACE = "\u2581"  # "▁", SentencePiece's whitespace meta symbol


def clean_text(text: str, normalization: str = "NFC", strip_html: bool = False) -> str:
    """Return ``text`` cleaned for training; see the module docstring for the guarantees.

    Steps: optional ``html_to_text``; line endings to ``\\n``; control characters removed;
    Unicode normalization; U+2581 to a space; whitespace tidied (``_tidy_whitespace``).

    Line endings and control characters go before normalization (the brief listed them after):
    removing a control character can bring a base letter and a combining mark together
    ("e\\x00\\u0301"), which normalizing first would leave uncomposed, and a second call would
    then change the text. ``\\r`` is itself a control character, so it is converted first.
    """
    _check_normalization(normalization)
    if strip_html:
        text = html_to_text(text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if _ANY_CONTROL.search(text):
        text = text.translate(_CONTROL_TABLE)
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    if _SENTENCEPIECE_SPACE in text:
        text = text.replace(_SENTENCEPIECE_SPACE, " ")
    return _tidy_whitespace(text)


@functools.lru_cache(maxsize=8)  # clean_text runs per document; only valid values are cached
def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise UserError(
            f"unknown Unicode normalization {normalization!r}: "
            f"choose one of {', '.join(NORMALIZATIONS)}"
        )


def _tidy_whitespace(text: str) -> str:
    """Plain spaces only, single spaces inside lines, indentation kept, at most one blank line.

    Leading indentation is kept because code and poetry carry meaning in it; each tab of it
    becomes one space like any other whitespace character.
    """
    # Each substitution only where a fast substring test finds something for it to do: most texts need none.
    if "\t" in text or not text.isascii():  # ASCII's other whitespace is a control character, gone by now
        text = _OTHER_WHITESPACE.sub(" ", text)
    if "  " in text:
        text = _INNER_SPACE_RUN.sub(" ", text)
    if " \n" in text or text.endswith(" "):
        text = _TRAILING_SPACES.sub("", text)  # also empties lines made only of spaces
    if "\n\n\n" in text:
        text = _EXTRA_NEWLINES.sub("\n\n", text)
    return text.strip("\n")


# Content that is never shown as text.
_SKIPPED_TAGS = frozenset({"script", "style", "noscript", "template"})
# Tags that start a new line when rendered.
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "caption", "dd", "details", "dialog",
        "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form",
        "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav", "ol", "p",
        "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
    }
)
# Table cells sit side by side: a space keeps their words apart without breaking the line.
_CELL_TAGS = frozenset({"td", "th"})
_HTML_WHITESPACE_RUN = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML document, one line per block element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive already unescaped
        self._parts: list[str] = []
        self._skip_depth = 0
        self._in_head = False
        self._pre_depth = 0
        self._at_line_start = True
        self._pending_space = False

    def text(self) -> str:
        return "".join(self._parts)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
        elif tag == "head":
            self._in_head = True
        elif tag == "body":
            self._in_head = False  # sloppy pages often never close <head>
        elif tag == "br":
            self._line_break(force=True)
        elif tag == "pre":
            self._line_break()
            self._pre_depth += 1
        elif tag in _BLOCK_TAGS:
            self._line_break()
        elif tag in _CELL_TAGS:
            self._pending_space = not self._at_line_start

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "head":
            self._in_head = False
        elif tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
            self._line_break()
        elif tag in _BLOCK_TAGS:
            self._line_break()

    def handle_data(self, data: str) -> None:
        if self._skip_depth or self._in_head:
            return
        if self._pre_depth:
            self._emit(data)
            return
        # Outside <pre>, a run of source whitespace renders as one space.
        collapsed = _HTML_WHITESPACE_RUN.sub(" ", data)
        words = collapsed.strip(" ")
        if collapsed.startswith(" "):
            self._pending_space = True
        if words:
            self._emit(words)
            self._pending_space = collapsed.endswith(" ")

    def _emit(self, text: str) -> None:
        if self._pending_space and not self._at_line_start:
            self._parts.append(" ")
        self._pending_space = False
        self._parts.append(text)
        self._at_line_start = text.endswith("\n")

    def _line_break(self, force: bool = False) -> None:
        """End the current line; consecutive block boundaries give one break, ``<br>`` always one."""
        self._pending_space = False
        if force or not self._at_line_start:
            self._parts.append("\n")
            self._at_line_start = True


def html_to_text(html: str) -> str:
    """Return the visible text of ``html``: block elements on their own lines, entities
    unescaped, inline tags removed, script/style/noscript/template and ``<head>`` dropped.

    Uses the standard library's lenient ``html.parser``, so malformed pages still give text.
    Whitespace inside ``<pre>`` is kept as written.
    """
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    return extractor.text()
