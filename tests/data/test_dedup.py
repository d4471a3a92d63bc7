"""Exact and MinHash-LSH near-duplicate detection: accuracy, LSH parameters, cluster order,
and determinism across processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os

import numpy as np
import pytest

import lmkit.data.dedup as dedup_module
from lmkit.data.dedup import (
    ExactDeduper,
    NearDeduper,
    band_keys,
    estimate_jaccard,
    lsh_params,
    minhash_signature,
    minhash_signatures,
    pair_digest,
    shingles,
    text_digest,
)
from lmkit.errors import UserError

_RNG = np.random.default_rng(20240611)
_VOCABULARY = [f"tok{i}" for i in range(5000)]
# A long random word stream: with 5000 distinct words, its 5-grams are all distinct.
_STREAM = [str(word) for word in _RNG.choice(_VOCABULARY, size=600)]


def doc(start: int, length: int = 200) -> str:
    return " ".join(_STREAM[start : start + length])


def true_jaccard(a: str, b: str, size: int = 5) -> float:
    set_a, set_b = set(shingles(a, size)), set(shingles(b, size))
    return len(set_a & set_b) / len(set_a | set_b)


# --- exact -----------------------------------------------------------------------------------


def test_text_digest_is_16_bytes_and_content_sensitive():
    assert len(text_digest("hello")) == 16
    # Golden digests, computed once: they pin the hash (blake2b, 16 bytes) and the encoding (UTF-8, a lone
    # surrogate passed through), which decide the exact-dedup keys and the train/validation split, so a
    # change here changes every dataset's split; change them only on purpose.
    assert text_digest("hello").hex() == "46fb7408d4f285228f4af516ea25851b"
    assert text_digest("Ünïcödé 東京 \udcff").hex() == "5281ac2a697065f99d4f7c1f1a816555"
    assert text_digest("hello") != text_digest("hello ")


def test_exact_deduper_first_sight_kept():
    dedup = ExactDeduper()
    results = [dedup.is_duplicate(text_digest(t)) for t in ["a", "b", "a", "c", "b", "a"]]
    assert results == [False, False, True, False, True, True]
    assert len(dedup) == 3


# --- shingles --------------------------------------------------------------------------------


def test_shingles_lowercase_and_strip_punctuation():
    assert shingles("The cat, the HAT!", size=2) == ["the cat", "cat the", "the hat"]


def test_short_and_empty_documents():
    assert shingles("Only three words.", size=5) == ["only three words"]
    assert shingles("", size=5) == []
    assert shingles(" ... !! ", size=5) == []


def test_cjk_text_gives_character_shingles():
    assert shingles("東京タワー", size=3) == ["東 京 タ", "京 タ ワ", "タ ワ ー"]


# --- MinHash accuracy ------------------------------------------------------------------------


@pytest.mark.parametrize(("shift", "target"), [(106, 0.3), (65, 0.5), (10, 0.9)])
def test_estimate_jaccard_close_to_true_jaccard(shift, target):
    a, b = doc(0), doc(shift)
    exact = true_jaccard(a, b)
    assert abs(exact - target) < 0.02  # the pair is as similar as the test claims
    estimate = estimate_jaccard(minhash_signature(a, num_perm=256), minhash_signature(b, num_perm=256))
    assert abs(estimate - exact) < 0.1


def test_identical_and_unrelated_signatures():
    a = minhash_signature(doc(0))
    assert a.dtype == np.uint64 and a.shape == (128,)
    assert estimate_jaccard(a, minhash_signature(doc(0))) == 1.0
    assert estimate_jaccard(a, minhash_signature(doc(300))) < 0.05


def test_seed_changes_the_permutations():
    assert not np.array_equal(minhash_signature(doc(0), seed=1), minhash_signature(doc(0), seed=2))


# The definition the vectorized signatures must equal, written plainly with Python integers.
_MASK = (1 << 64) - 1


def reference_signature(text: str, num_perm: int = 128, size: int = 5, seed: int = 1) -> list[int]:
    words = shingles(text, size=1)  # size 1: the words themselves
    if not words:
        return [1 << 32] * num_perm
    base = 0x9E3779B97F4A7C15

    def word_hash(word: str) -> int:
        return sum((ord(char) + 1) * pow(base, i, 1 << 64) for i, char in enumerate(word)) % (1 << 64) >> 32

    hashes = [word_hash(w) for w in words]
    width = min(size, len(hashes))
    weights = [int(w) for w in dedup_module._coefficients(size, seed, "shingle")]
    grams = [sum(h * w for h, w in zip(hashes[i:i + width], weights)) & _MASK
             for i in range(len(hashes) - width + 1)]
    a = [int(v) for v in dedup_module._coefficients(num_perm, seed, "a")]
    b = [int(v) for v in dedup_module._coefficients(num_perm, seed, "b")]
    return [min(((ai * (g >> 32) + bi) & _MASK) >> 32 for g in grams) for ai, bi in zip(a, b)]


_ODD_TEXTS = [
    "The cat sat on the mat, and the dog_sat on the log!",  # punctuation deleted, "_" kept
    "Ünïcödé café naïve — “quoted” résumé Straße İstanbul",  # accents, dashes, quotes, lowercasing that grows
    "e\u0301 combining marks stay: a\u0301\u0300 o\u0308, x",  # decomposed accents
    "東京タワーは高い tower 123 東",  # CJK characters are words of their own
    "東\u0301京 𠀀𠀁x 𠀂 hi🙂there, ok",  # a mark after one, ideographs beyond 0xFFFF, an emoji between letters
    "tab\tand\u3000ideographic\xa0spaces\u2003em\nlines",  # every kind of whitespace separates words
    "two words", "one", "", " ... !! ___ ", "🙂🙂 🙂",  # short, empty, punctuation only, emoji
    "lone \udcff surrogate from undecodable bytes here ok",
    "x " * 40,  # repeated shingles
]


@pytest.mark.parametrize("text", _ODD_TEXTS)
def test_signature_matches_the_plain_definition(text):
    assert minhash_signature(text, num_perm=16).tolist() == reference_signature(text, num_perm=16)


def test_batch_signatures_match_one_at_a_time():
    texts = _ODD_TEXTS + [doc(i, 30 + i) for i in range(0, 200, 37)] + _ODD_TEXTS[::-1]
    batch = minhash_signatures(texts, num_perm=32)
    assert batch.shape == (len(texts), 32)
    for text, signature in zip(texts, batch):
        np.testing.assert_array_equal(signature, minhash_signature(text, num_perm=32))
    assert minhash_signatures([], num_perm=32).shape == (0, 32)


def test_long_document_chunked_signature_matches_unchunked(monkeypatch):
    import lmkit.data.dedup as dedup

    text = " ".join(_STREAM * 3)
    whole = minhash_signature(text, num_perm=64)
    monkeypatch.setattr(dedup, "_CHUNK_VALUES", 64 * 7)  # 7 shingles per step
    np.testing.assert_array_equal(minhash_signature(text, num_perm=64), whole)


# --- LSH parameters and keys -----------------------------------------------------------------


@pytest.mark.parametrize("num_perm", [64, 128, 256])
@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_lsh_params_fit_and_center_the_s_curve(threshold, num_perm):
    bands, rows = lsh_params(threshold, num_perm)
    assert bands * rows <= num_perm
    assert abs((1 / bands) ** (1 / rows) - threshold) < 0.15


def _reference_lsh_params(threshold: float, num_perm: int, steps: int = 4000):
    """Plain-loop midpoint-rule version of the same minimization."""

    def area(probability, low, high):
        width = (high - low) / steps
        return sum(probability(low + (i + 0.5) * width) for i in range(steps)) * width

    best, best_error = None, float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = area(lambda s, r=r, b=b: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = area(lambda s, r=r, b=b: (1 - s**r) ** b, threshold, 1.0)
            if fp + fn < best_error:
                best, best_error = (b, r), fp + fn
    return best


@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_lsh_params_match_a_reference_minimization(threshold):
    assert lsh_params(threshold, 16) == _reference_lsh_params(threshold, 16)


def test_band_keys_never_collide_across_bands():
    constant = np.full((1, 128), 7, dtype=np.uint64)  # every band has the same content
    [keys] = band_keys(constant, bands=16, rows=8)
    assert len(set(keys)) == 16
    assert all(0 <= key < 2**64 for key in keys)


def test_band_keys_are_blake2b_of_each_band_with_its_index():
    signatures = _RNG.integers(0, 2**32, size=(3, 20), dtype=np.uint64)
    keys = band_keys(signatures, bands=3, rows=6)
    for signature, text_keys in zip(signatures, keys):
        expected = []
        for band in range(3):
            content = b"".join(int(v).to_bytes(8, "little") for v in signature[band * 6:(band + 1) * 6])
            digest = int.from_bytes(hashlib.blake2b(content, digest_size=8).digest(), "little")
            expected.append(digest >> 2 << 2 | band)
        assert text_keys == expected


def test_band_keys_reject_too_many_rows():
    with pytest.raises(ValueError):
        band_keys(np.zeros((1, 16), dtype=np.uint64), bands=5, rows=4)


# --- near-duplicate decisions ----------------------------------------------------------------


def _edit(text: str, positions: list[int]) -> str:
    words = text.split()
    for position in positions:
        words[position] = "changed" + str(position)
    return " ".join(words)


def test_two_changed_words_in_200_is_a_near_duplicate_unrelated_is_not():
    original = doc(0)
    near = _edit(original, [50, 150])
    assert true_jaccard(original, near) > 0.85
    dedup = NearDeduper(threshold=0.8)
    assert dedup.is_duplicate(dedup.keys([original])[0]) is False
    assert dedup.is_duplicate(dedup.keys([near])[0]) is True
    assert dedup.is_duplicate(dedup.keys([doc(300)])[0]) is False


def test_first_document_of_a_cluster_survives():
    original = doc(0)
    cluster = [_edit(original, [10]), original, _edit(original, [100, 180]), doc(300)]
    dedup = NearDeduper()
    assert [dedup.is_duplicate(keys) for keys in dedup.keys(cluster)] == [False, True, True, False]  # one batch


def test_a_document_near_any_earlier_one_is_dropped_kept_or_not():
    dedup = NearDeduper()
    assert dedup.is_duplicate([1, 2, 3]) is False
    assert dedup.is_duplicate([3, 4]) is True
    assert dedup.is_duplicate([4]) is True  # near [3, 4], which was dropped: decided by the documents before it
    assert dedup.is_duplicate([5]) is False



def test_pairs_are_near_duplicates_only_when_both_texts_are():
    premise, hypothesis = doc(0), doc(300, 60)
    dedup = NearDeduper()
    assert dedup.is_duplicate(dedup.pair_keys(premise, hypothesis)) is False
    assert dedup.is_duplicate(dedup.pair_keys(premise, doc(400, 60))) is False  # the same premise, another pair
    assert dedup.is_duplicate(dedup.pair_keys(hypothesis, premise)) is False  # the texts swapped
    assert dedup.is_duplicate(dedup.pair_keys(_edit(premise, [50]), hypothesis)) is True
    assert dedup.pair_keys("!!! ???", hypothesis) == []
    assert pair_digest("a b", "c") != pair_digest("a", "b c") != text_digest("a b c")


def test_documents_without_shingles_are_never_near_duplicates():
    # Without words every signature slot is empty, so all such documents would share every band.
    dedup = NearDeduper()
    texts = ["!!! ???", "\U0001f44d\U0001f44d", "", "  \n ", "!!! ???"]
    assert dedup.keys(texts) == [[]] * len(texts)
    for keys in dedup.keys(texts):
        assert dedup.is_duplicate(keys) is False
    assert dedup.is_duplicate([]) is False
    assert dedup._seen == set()  # nothing remembered
    assert dedup.is_duplicate(dedup.keys([doc(0)])[0]) is False

@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"threshold": 1.0}, "--near-dedup-threshold"),
        ({"threshold": 0.0}, "--near-dedup-threshold"),
        ({"num_perm": 8}, "num_perm"),
    ],
)
def test_bad_near_dedup_settings_are_user_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        NearDeduper(**kwargs)


# --- determinism -----------------------------------------------------------------------------


def test_signatures_and_keys_identical_in_a_spawned_process(monkeypatch):
    # Give the child a string-hash salt that differs from ours, and check that it does, so a
    # signature built on the builtin hash() could not pass by luck.
    ours = os.environ.get("PYTHONHASHSEED")
    monkeypatch.setenv("PYTHONHASHSEED", "2" if ours == "1" else "1")
    text = doc(0) + " Ünïcödé 東京タワー"
    near = NearDeduper()
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child_hash = pool.apply(hash, ("salted probe",))
        child_signature = pool.apply(minhash_signature, (text,), {"num_perm": 64})
        child_keys = pool.apply(near.keys, ([text],))
        child_digest = pool.apply(text_digest, (text,))
    assert child_hash != hash("salted probe")
    np.testing.assert_array_equal(child_signature, minhash_signature(text, num_perm=64))
    assert child_keys == near.keys([text])
    assert child_digest == text_digest(text)
