"""Completion text from ids: stop strings cut exactly, streamed pieces add up to the final text, the leading
space survives, and characters spelled in byte pieces are never streamed half-made."""

import pytest

from lmkit.generation.text import CompletionText, cut_at_stop, held_back
from lmkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return Tokenizer.from_artifact(dataset / "tokenizer")


def feed(tokenizer, prompt: str, continuation: str, stops=()):
    """Feed the continuation's ids one at a time, as decoding would; returns (text, streamed pieces, tokens fed)."""
    prompt_ids = tokenizer.encode(prompt)
    ids = tokenizer.encode(prompt + continuation)[len(prompt_ids):]
    assert tokenizer.encode(prompt + continuation)[:len(prompt_ids)] == prompt_ids
    pieces = []
    completion = CompletionText(tokenizer, prompt_ids[-1], tuple(stops), pieces.append)
    fed = 0
    for fed in range(1, len(ids) + 1):
        if completion.update(ids[:fed]):
            break
    return completion.finish(), pieces, fed


def test_the_completion_keeps_its_leading_space(tokenizer):
    text, pieces, _ = feed(tokenizer, "The for statement", " is used to iterate")
    assert text == " is used to iterate"
    assert "".join(pieces) == text and len(pieces) > 1  # streamed in several pieces


SENTENCE = " is used. It can iterate over the items"


@pytest.mark.parametrize("stops,expected", [
    ((".",), " is used"),
    (("iter",), " is used. It can "),                    # a stop inside a word cuts inside it
    (("It can", "."), " is used"),                       # the earliest occurrence wins, not the first listed
    ((" over the items", "z"), " is used. It can iterate"),
    (("\n",), SENTENCE),                                 # never appears: nothing is cut
])
def test_stop_strings_cut_exactly(tokenizer, stops, expected):
    text, pieces, _ = feed(tokenizer, "The for statement", SENTENCE, stops)
    assert text == expected
    assert "".join(pieces) == text  # nothing past the stop was ever streamed


def test_decoding_stops_at_the_token_that_completes_the_stop_string(tokenizer):
    prompt, continuation = "x", " alpha beta gamma delta"
    ids = tokenizer.encode(prompt + continuation)[len(tokenizer.encode(prompt)):]
    _, _, fed = feed(tokenizer, prompt, continuation, ("gamma",))
    assert fed < len(ids)
    assert "gamma" in tokenizer.decode(ids[:fed]) and "gamma" not in tokenizer.decode(ids[:fed - 1])


def test_a_possible_stop_string_is_held_back_until_it_is_settled(tokenizer):
    pieces = []
    prompt_ids = tokenizer.encode("a")
    ids = tokenizer.encode("a b##c")[len(prompt_ids):]
    completion = CompletionText(tokenizer, prompt_ids[-1], ("###",), pieces.append)
    for fed in range(1, len(ids) + 1):
        completion.update(ids[:fed])
        if completion.text.endswith("#"):  # "#" or "##" may begin "###": not shown yet
            assert "".join(pieces) == completion.text.rstrip("#")
    assert "".join(pieces) == " b##c"  # "c" settled it: shown before the end
    assert completion.finish() == " b##c"


def test_byte_pieces_are_streamed_only_as_whole_characters(tokenizer):
    text, pieces, _ = feed(tokenizer, "x", " 𝔘 and ü")
    assert text == " 𝔘 and ü"
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == text


def test_helpers():
    assert cut_at_stop("abcabc", ("c", "b")) == 1
    assert cut_at_stop("abc", ("x",)) is None
    assert held_back("hello ##", ("###",)) == 2
    assert held_back("hello #", ("###", "#!")) == 1
    assert held_back("hello \ufffd\ufffd", ()) == 2
    assert held_back("hello", ("###",)) == 0
