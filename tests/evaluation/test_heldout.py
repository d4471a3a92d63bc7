"""The held-out choice tasks: the right choice is the document's own text, the others are not, the items are a pure
function of the documents and the seed, and a trained model tells them apart where chance cannot."""

import random
from collections import Counter

import pytest

from lmkit.evaluation import heldout
from lmkit.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def documents(dataset):
    tokenizer = Tokenizer.from_artifact(dataset / "tokenizer")
    from tests.conftest import paragraphs

    texts = [" ".join(p.split()) for p in paragraphs() if len(p.split()) > 60][:40]
    return tokenizer, [tokenizer.encode(text) for text in texts]


def test_continuation_items_pick_the_documents_next_tokens(documents):
    tokenizer, docs = documents
    items = heldout.continuation_items(docs, tokenizer, 30, seed=3)
    assert len(items) == 30
    texts = [tokenizer.decode(ids) for ids in docs]
    for item in items:
        assert len(item.choices) == heldout.CHOICES == len(set(item.choices))
        right = item.context + item.choices[item.answer]
        owner = int(item.id.rsplit("/", 1)[1].split("@")[0])
        assert right in texts[owner]
        # Each wrong choice comes from another document: it does not continue this context.
        for k, choice in enumerate(item.choices):
            if k != item.answer:
                assert item.context + choice not in texts[owner]
    assert len(Counter(item.answer for item in items)) == heldout.CHOICES  # the answer's place varies


def test_order_items_shuffle_the_same_words(documents):
    tokenizer, docs = documents
    items = heldout.order_items(docs, tokenizer, 20, seed=3)
    assert len(items) == 20
    for item in items:
        right = item.choices[item.answer]
        owner = tokenizer.decode(docs[int(item.id.rsplit("/", 1)[1].split("@")[0])])
        assert " ".join((item.context + right).split()) in " ".join(owner.split())
        assert all(sorted(choice.split()) == sorted(right.split()) for choice in item.choices)
        assert len(set(item.choices)) == heldout.CHOICES


def test_items_are_a_function_of_the_documents_and_the_seed(documents):
    tokenizer, docs = documents
    first = heldout.tasks(docs, tokenizer, 10, 1, 1024)
    assert first == heldout.tasks(docs, tokenizer, 10, 1, 1024)
    assert first != heldout.tasks(docs, tokenizer, 10, 2, 1024)


def test_short_or_few_documents_make_no_items(documents):
    tokenizer, docs = documents
    short = [ids[:heldout.CONTEXT_TOKENS] for ids in docs]
    assert heldout.tasks(short, tokenizer, 10, 0, 1024) == {"heldout_continuation": [], "heldout_order": []}
    assert heldout.continuation_items(docs[:3], tokenizer, 10, seed=0) == []  # distractors need 3 others


def test_chance_sees_a_quarter(documents):
    """A positive control for the scoring: a guesser is right about a quarter of the time."""
    tokenizer, docs = documents
    items = heldout.continuation_items(docs, tokenizer, 40, seed=0)
    rng = random.Random(0)
    guessed = sum(rng.randrange(heldout.CHOICES) == item.answer for item in items * 25) / (len(items) * 25)
    assert guessed == pytest.approx(0.25, abs=0.05)


def test_items_fit_a_short_window(documents):
    tokenizer, docs = documents
    for items in heldout.tasks(docs, tokenizer, 10, 0, window=32).values():
        assert items
        for item in items:
            assert all(len(tokenizer.encode(choice)) <= 16 for choice in item.choices)
    # Words of many tokens each (code, URLs): no four of them fit half the window, so no item is made of them.
    rng = random.Random(0)
    long_words = " ".join("".join(rng.choice("qxzjkv") for _ in range(30)) for _ in range(60))
    assert heldout.order_items([tokenizer.encode(long_words)] * 8, tokenizer, 10, 0, window=32) == []
