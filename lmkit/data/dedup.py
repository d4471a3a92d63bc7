"""Exact and near-duplicate detection: a content digest for exact duplicates, MinHash signatures
(Broder 1997, "On the resemblance and containment of documents") with LSH banding (Leskovec,
Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3.4) for near duplicates.

Determinism: every hash here is blake2b, crc32 or plain integer arithmetic, never Python's
``hash()`` (salted per process), so signatures and band keys are identical in every worker and
every run.

The rule, the same in one process (these classes, in input order) and on Ray (stages/preprocess_ray.py, sorting
each key's documents): a document is an exact duplicate when an earlier document has its digest, and otherwise
a near duplicate when it shares an LSH band key with any earlier document, kept or dropped. So the first
document of a cluster survives, and whether a document is dropped depends only on the documents before it and
never on what was decided about them: each key is decided alone, which is what lets the distributed stage decide
the keys of each partition in a separate task, with no connected-components rounds.

Memory: ``ExactDeduper`` keeps one 16-byte digest per distinct document (about 100 bytes with
Python's overhead); ``NearDeduper`` keeps ``bands`` 64-bit keys per exact-distinct document (about 70
bytes each in a Python set; 9 bands at the default threshold 0.8 and 128 permutations, so
roughly 0.6 KB per document, 6 GB for ten million). Beyond that, ``--executor ray`` spreads the keys over
partitions.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
import zlib

import numpy as np

from lmkit.data.filters import split_words
from lmkit.errors import ConfigError

_EMPTY_SLOT = np.uint64(1 << 32)  # above every permuted hash value, which has 32 bits
# Bound on num_perm x shingles values per vectorized step (8 MiB per uint64 temporary).
_CHUNK_VALUES = 1 << 20


def text_digest(text: str) -> bytes:
    """16-byte blake2b digest of the UTF-8 text: exact-dedup key and train/validation split hash.

    Lone surrogates (from undecodable bytes read with ``surrogateescape``) are encoded as is
    rather than raising, so every ``str`` has a digest.
    """
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# Cleaned text holds no control character (data/cleaning.py), so text + U+0000 + pair names one pair only.
PAIR_SEPARATOR = "\x00"


def pair_digest(text: str, pair: str) -> bytes:
    """The digest of a pair of texts (preprocess --text-pair-field): what ``text_digest`` is to one text."""
    return text_digest(text + PAIR_SEPARATOR + pair)


class ExactDeduper:
    """Remembers digests: the first document with a given digest is kept, later ones dropped."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def is_duplicate(self, digest: bytes) -> bool:
        """False the first time ``digest`` is seen (and remember it), True afterwards."""
        if digest in self._seen:
            return True
        self._seen.add(digest)
        return False


_PUNCTUATION_RUN = re.compile(r"[^\w\s]+")


def _drop_punctuation(match: re.Match[str]) -> str:
    # [^\w\s] also matches combining marks (Devanagari vowel signs, decomposed accents), which
    # belong to their word: keep those, drop punctuation and symbols.
    run = match.group()
    if run.isascii():
        return ""
    return "".join(char for char in run if unicodedata.category(char).startswith("M"))


def shingles(text: str, size: int = 5) -> list[str]:
    """Word ``size``-grams of the lowercased text with punctuation removed, in document order.

    Words are ``filters.split_words``, so each CJK character is a word and Chinese or Japanese
    text gets character n-grams instead of one giant "word". A document with fewer than ``size``
    words gives one shingle of all its words; one with no words gives none.
    """
    if size < 1:
        raise ValueError(f"shingle size must be >= 1, got {size}")
    words = split_words(_PUNCTUATION_RUN.sub(_drop_punctuation, text.lower()))
    if not words:
        return []
    if len(words) <= size:
        return [" ".join(words)]
    return [" ".join(words[i : i + size]) for i in range(len(words) - size + 1)]


@functools.lru_cache(maxsize=16)
def _coefficients(count: int, seed: int, label: str) -> np.ndarray:
    """``count`` odd 64-bit multipliers from blake2b, so they never change with numpy's RNG."""
    values = np.empty(count, dtype=np.uint64)
    for i in range(count):
        digest = hashlib.blake2b(f"lmkit-minhash:{label}:{seed}:{i}".encode(), digest_size=8).digest()
        values[i] = int.from_bytes(digest, "little") | 1
    values.flags.writeable = False
    return values


# A regex deletes ASCII punctuation far faster than str.translate; non-ASCII runs go through
# _drop_punctuation, which keeps combining marks.
_ASCII_PUNCTUATION = re.compile("[" + re.escape("".join(chr(c) for c in range(128)
                                                          if not chr(c).isalnum() and not chr(c).isspace())) + "]+")
_word_cache: dict[str, int] = {}


def _word_hashes(text: str) -> np.ndarray:
    """crc32 of each word (as in ``shingles``), cached per process: corpora repeat words a lot."""
    lowered = _ASCII_PUNCTUATION.sub("", text.lower())
    if not lowered.isascii():
        lowered = _PUNCTUATION_RUN.sub(_drop_punctuation, lowered)
    words = split_words(lowered)
    if len(_word_cache) > 1_000_000:  # bound the cache on huge vocabularies
        _word_cache.clear()
    hashes = list(map(_word_cache.get, words))  # C-level passes; words not seen before are hashed below
    if None in hashes:
        for index, value in enumerate(hashes):
            if value is None:
                word = words[index]
                hashes[index] = _word_cache[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
    return np.array(hashes, dtype=np.uint64)


def _shingle_hashes(text: str, size: int, seed: int) -> np.ndarray:
    """Distinct 32-bit hashes of the word ``size``-grams: a random linear combination of the
    words' hashes mod 2**64, top 32 bits (multiply-shift hashing, Dietzfelbinger et al. 1997)."""
    words = _word_hashes(text)
    if len(words) == 0:
        return words
    width = min(size, len(words))
    count = len(words) - width + 1
    weights = _coefficients(width, seed, "shingle")
    combined = np.zeros(count, dtype=np.uint64)
    for offset in range(width):  # uint64 arithmetic wraps around: that is the mod 2**64
        combined += words[offset:offset + count] * weights[offset]
    return np.unique(combined >> np.uint64(32))


def minhash_signature(
    text: str, num_perm: int = 128, shingle_size: int = 5, seed: int = 1
) -> np.ndarray:
    """MinHash signature (uint64 values below 2**32, length ``num_perm``) of the text's word
    ``shingle_size``-grams (Broder 1997).

    Permutation i is the multiply-add-shift hash ((a_i * x + b_i) mod 2**64) >> 32 of the
    shingle hash x, a 2-independent family that numpy computes in two vector operations.
    A text without words gets the all-``2**32`` signature.
    """
    a = _coefficients(num_perm, seed, "a")[:, None]
    b = _coefficients(num_perm, seed, "b")[:, None]
    signature = np.full(num_perm, _EMPTY_SLOT, dtype=np.uint64)
    hashes = _shingle_hashes(text, shingle_size, seed)
    chunk = max(1, _CHUNK_VALUES // num_perm)  # bounds memory on very long documents
    for start in range(0, len(hashes), chunk):
        permuted = a * hashes[None, start:start + chunk]  # (num_perm, chunk)
        permuted += b
        # The shift is monotonic, so it commutes with the minimum: one pass over num_perm values, not chunk.
        np.minimum(signature, permuted.min(axis=1) >> np.uint64(32), out=signature)
    return signature


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature slots: an unbiased estimate of the shingle-set Jaccard."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in shape: {sig_a.shape} vs {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimizing false positives + false negatives.

    A pair of similarity s shares at least one band with probability 1 - (1 - s**rows)**bands
    (MMDS ch. 3.4.2). Like datasketch's ``_optimal_param``, we pick the (bands, rows) minimizing
    the area under that curve below ``threshold`` (false positives) plus the area above it of
    its complement (false negatives), equal weights, by numeric integration; ties go to fewer
    bands, then fewer rows.
    """
    candidates = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in candidates], dtype=np.float64)[:, None]
    rows = np.array([r for _, r in candidates], dtype=np.float64)[:, None]
    false_positive = _integrate(
        lambda s: 1.0 - (1.0 - s**rows) ** bands, 0.0, threshold
    )
    false_negative = _integrate(lambda s: (1.0 - s**rows) ** bands, threshold, 1.0)
    best = int(np.argmin(false_positive + false_negative))  # first minimum: the tie rule
    return candidates[best]


def _integrate(function, low: float, high: float, points: int = 1001) -> np.ndarray:
    """Trapezoid rule over ``points`` samples, row-wise for a function returning (n, points)."""
    grid = np.linspace(low, high, points)
    values = function(grid[None, :])
    step = (high - low) / (points - 1)
    return (values[:, 1:] + values[:, :-1]).sum(axis=1) * step / 2.0


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One stable 64-bit key per band: blake2b of the band's slots, band index in the low bits.

    The low ``bit_length(bands - 1)`` bits hold the band index, so keys of different bands can
    never be equal and one set can hold all bands.
    """
    if bands * rows > len(signature):
        raise ValueError(f"{bands} bands x {rows} rows exceed {len(signature)} signature slots")
    index_bits = (bands - 1).bit_length()
    slots = np.ascontiguousarray(signature[: bands * rows], dtype="<u8")
    keys = []
    for band in range(bands):
        content = slots[band * rows : (band + 1) * rows].tobytes()
        digest = hashlib.blake2b(content, digest_size=8).digest()
        keys.append((int.from_bytes(digest, "little") >> index_bits << index_bits) | band)
    return keys


class NearDeduper:
    """MinHash-LSH near-duplicate detection; see the module docstring for memory and order.

    ``keys`` is pure and can run in worker processes; ``is_duplicate`` must be called in input
    order in one process. A document is a duplicate when any of its band keys was seen before,
    i.e. when it collides with some earlier document in at least one band: pairs above
    ``threshold`` almost always collide, pairs well below it rarely do (the LSH S-curve).
    Collisions are not verified against stored signatures, to keep memory at ``bands`` keys
    per kept document.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5):
        problems = []
        if not 0.0 < threshold < 1.0:
            problems.append(f"--near-dedup-threshold must be between 0 and 1, got {threshold}")
        if num_perm < 16:
            problems.append(f"near-dedup num_perm must be at least 16, got {num_perm}")
        if shingle_size < 1:
            problems.append(f"near-dedup shingle size must be at least 1, got {shingle_size}")
        if problems:
            raise ConfigError(problems)
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._seen: set[int] = set()

    def keys(self, text: str) -> list[int]:
        """Band keys of ``text``; pure, so worker processes can compute them.

        A text without shingles ("!!! ???", emoji only) has no keys: its all-empty signature
        would otherwise make every such text a near duplicate of the first one.
        """
        signature = minhash_signature(text, self.num_perm, self.shingle_size)
        if signature[0] == _EMPTY_SLOT:  # a real slot is below 2**32, so no shingle was hashed
            return []
        return band_keys(signature, self.bands, self.rows)

    def pair_keys(self, text: str, pair: str) -> list[int]:
        """Band keys of a pair of texts: band b of both signatures hashed together, so two pairs share a key
        only when their first texts and their second texts both agree on that band (probability
        (s1 * s2)**rows: the threshold applies to the product of the two similarities). Pairs that share one
        text, such as a premise with several hypotheses, are not near duplicates unless their other texts are
        near duplicates too. A text without shingles: no keys."""
        first = minhash_signature(text, self.num_perm, self.shingle_size)
        second = minhash_signature(pair, self.num_perm, self.shingle_size)
        if first[0] == _EMPTY_SLOT or second[0] == _EMPTY_SLOT:
            return []
        used = self.bands * self.rows
        both = np.concatenate([first[:used].reshape(self.bands, self.rows),
                               second[:used].reshape(self.bands, self.rows)], axis=1)  # (bands, 2 * rows)
        return band_keys(both.reshape(-1), self.bands, 2 * self.rows)

    def is_duplicate(self, keys: list[int]) -> bool:
        """True if any key was seen before; the keys are remembered either way (a later document near this one
        is a duplicate whether this one was kept or not). No keys: never a duplicate, nothing remembered."""
        duplicate = any(key in self._seen for key in keys)
        self._seen.update(keys)
        return duplicate
