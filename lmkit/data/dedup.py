"""Exact and near-duplicate detection: a content digest for exact duplicates, MinHash signatures
(Broder 1997, "On the resemblance and containment of documents") with LSH banding (Leskovec,
Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3.4) for near duplicates.

Determinism: every hash here is blake2b or plain integer arithmetic, never Python's
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

import numpy as np

from lmkit.data.filters import CJK, split_words
from lmkit.errors import ConfigError

_EMPTY_SLOT = np.uint64(1 << 32)  # above every permuted hash value, which has 32 bits
# Bound on num_perm x shingles values per vectorized step (8 MiB per uint64 temporary). Fewer, larger steps win
# over cache-sized ones: 5 MB of prose keyed in 0.23 s at 2**20 values, 0.25 s at 2**17, 0.27 s at 2**15.
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


# Word hash: the polynomial sum((code point + 1) * P**i) mod 2**64 over the word's characters, top 32 bits. P is
# odd, so it has an inverse mod 2**64, which lets one prefix sum over a whole batch give every word's hash.
_WORD_BASE = 0x9E3779B97F4A7C15
_powers: dict[int, np.ndarray] = {}
_NEITHER_WORD_NOR_SPACE = re.compile(r"[^\w\s]")
_SPACE = re.compile(r"\s")


def _power_table(base: int, length: int) -> np.ndarray:
    """base**i mod 2**64 for i < length (at least), cached; uint64 products wrap around, which is the mod."""
    table = _powers.get(base)
    if table is None or len(table) < length:
        size = max(length, 2 * len(table) if table is not None else 1 << 16)
        table = np.cumprod(np.full(size, base, dtype=np.uint64))
        table[1:] = table[:-1].copy()
        table[0] = 1
        table.flags.writeable = False
        _powers[base] = table
    return table


def _character_classes(chars: str) -> np.ndarray:
    """For each character, as ``shingles`` reads it: bit 1 when it is deleted (neither a word character nor
    whitespace nor a combining mark: punctuation, symbols, emoji), bit 2 when it is whitespace, bit 4 when it is a
    word of its own (``filters.CJK``). Found by the very regexes ``shingles`` uses."""
    classes = np.zeros(len(chars), dtype=np.uint8)
    for match in _NEITHER_WORD_NOR_SPACE.finditer(chars):
        if not unicodedata.category(match.group()).startswith("M"):
            classes[match.start()] = 1
    classes[[m.start() for m in _SPACE.finditer(chars)]] |= 2
    classes[[m.start() for m in CJK.finditer(chars)]] |= 4
    return classes


@functools.cache
def _plane_zero_classes() -> np.ndarray:
    """``_character_classes`` of every code point below 0x10000, computed once per process (about 30 ms)."""
    return _character_classes("".join(map(chr, range(0x10000))))


def _classify(points: np.ndarray) -> np.ndarray:
    classes = _plane_zero_classes()[np.minimum(points, 0xFFFF)]
    astral = np.flatnonzero(points > 0xFFFF)
    if len(astral):  # emoji and rare ideographs: their distinct code points one by one
        values, inverse = np.unique(points[astral], return_inverse=True)
        classes[astral] = _character_classes("".join(map(chr, values.tolist())))[inverse]
    return classes


def _word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The 32-bit hash of each word of each text, the words of ``shingles`` (as uint64), and each text's word
    count, for a whole batch in a few vector passes over its code points."""
    lowered = [text.lower() for text in texts]
    # Texts one space apart, so that no word spans two; UTF-32 gives one unit per character, lone surrogates too.
    points = np.frombuffer(" ".join(lowered).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    text_start = np.zeros(len(texts), dtype=np.int64)
    if len(texts) > 1:
        np.cumsum([len(text) + 1 for text in lowered[:-1]], out=text_start[1:])
    classes = _classify(points)
    kept = (classes & 1) == 0
    text_start = np.concatenate(([0], np.cumsum(kept)))[text_start]  # in the kept characters
    points, classes = points[kept], classes[kept]
    word, alone = (classes & 2) == 0, (classes & 4) != 0
    # A word starts after whitespace or at a character that is a word of its own, or just after one; ends alike.
    before = np.concatenate(([False], word[:-1] & ~alone[:-1]))
    after = np.concatenate((word[1:] & ~alone[1:], [False]))
    starts = np.flatnonzero(word & (alone | ~before))
    ends = np.flatnonzero(word & (alone | ~after)) + 1
    forward = _power_table(_WORD_BASE, len(points))[: len(points)]
    prefix = np.zeros(len(points) + 1, dtype=np.uint64)
    np.cumsum((points.astype(np.uint64) + np.uint64(1)) * forward, out=prefix[1:])
    inverse = _power_table(pow(_WORD_BASE, -1, 1 << 64), len(points))
    hashes = (prefix[ends] - prefix[starts]) * inverse[starts] >> np.uint64(32)
    counts = np.diff(np.searchsorted(starts, text_start), append=len(starts))
    return hashes, counts


def _shingle_hashes(words: np.ndarray, counts: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 32-bit hash of each word ``size``-gram of each text, in text order, and each text's count: a random
    linear combination of the words' hashes mod 2**64, top 32 bits (multiply-shift hashing, Dietzfelbinger et
    al. 1997). A text with fewer than ``size`` words has one shingle of all of them, one with none has none.
    Shingles repeat as they occur in the text, which changes no minimum."""
    weights = _coefficients(size, seed, "shingle")
    span = max(len(words) - size + 1, 0)
    combined = np.zeros(span, dtype=np.uint64)
    for offset in range(size if span else 0):  # uint64 arithmetic wraps around: that is the mod
        combined += words[offset:offset + span] * weights[offset]
    owner = np.repeat(np.arange(len(counts)), counts)  # the text of each word
    combined = combined[owner[:span] == owner[size - 1:]]  # the windows within one text
    shingle_counts = np.where(counts >= size, counts - size + 1, np.minimum(counts, 1))
    short = np.flatnonzero((counts > 0) & (counts < size))
    if len(short):  # few texts are this short: one shingle each, of all their words, put in its place
        first_word = np.cumsum(counts) - counts
        values = [sum(int(words[first_word[i] + k]) * int(weights[k]) for k in range(counts[i])) % (1 << 64)
                  for i in short]
        place = (np.cumsum(shingle_counts) - shingle_counts)[short] - np.arange(len(short))
        combined = np.insert(combined, place, np.array(values, dtype=np.uint64))
    return combined >> np.uint64(32), shingle_counts


def minhash_signatures(texts: list[str], num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> np.ndarray:
    """MinHash signatures (``len(texts)`` x ``num_perm``, uint64 values below 2**32) of the texts' word
    ``shingle_size``-grams (Broder 1997), computed for the whole batch at once.

    Permutation i is the multiply-add-shift hash ((a_i * x + b_i) mod 2**64) >> 32 of the shingle hash x, a
    2-independent family that numpy computes in two vector operations. A text without words gets the
    all-``2**32`` signature.
    """
    if shingle_size < 1:
        raise ValueError(f"shingle size must be >= 1, got {shingle_size}")
    a = _coefficients(num_perm, seed, "a")[:, None]
    b = _coefficients(num_perm, seed, "b")[:, None]
    words, word_counts = _word_hashes(texts)
    hashes, counts = _shingle_hashes(words, word_counts, shingle_size, seed)
    signatures = np.full((num_perm, len(texts)), np.iinfo(np.uint64).max, dtype=np.uint64)
    owner = np.repeat(np.arange(len(texts)), counts)  # the text of each shingle, in order
    chunk = max(1, _CHUNK_VALUES // num_perm)  # bounds memory, and keeps a step's values in cache
    for start in range(0, len(hashes), chunk):
        stop = min(start + chunk, len(hashes))
        permuted = a * hashes[None, start:stop]  # (num_perm, chunk)
        permuted += b
        # Each text's shingles are contiguous: one minimum per text present in this chunk.
        here = owner[start:stop]
        first = np.flatnonzero(np.concatenate(([True], here[1:] != here[:-1])))
        texts_here = here[first]
        lowest = np.minimum.reduceat(permuted, first, axis=1)
        np.minimum(signatures[:, texts_here], lowest, out=lowest)
        signatures[:, texts_here] = lowest
    # The shift is monotonic, so it commutes with the minimum: one pass over the minima, not the shingles.
    signatures = np.ascontiguousarray((signatures >> np.uint64(32)).T)
    signatures[counts == 0] = _EMPTY_SLOT
    return signatures


def minhash_signature(text: str, num_perm: int = 128, shingle_size: int = 5, seed: int = 1) -> np.ndarray:
    """``minhash_signatures`` of one text."""
    return minhash_signatures([text], num_perm, shingle_size, seed)[0]


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


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> list[list[int]]:
    """One stable 64-bit key per band of each signature (a row of ``signatures``): blake2b of the band's slots,
    band index in the low bits.

    The low ``bit_length(bands - 1)`` bits hold the band index, so keys of different bands can
    never be equal and one set can hold all bands.
    """
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows exceed {signatures.shape[1]} signature slots")
    index_bits = (bands - 1).bit_length()
    slots = memoryview(np.ascontiguousarray(signatures[:, : bands * rows], dtype="<u8").tobytes())
    width = rows * 8
    digests = b"".join([hashlib.blake2b(slots[start:start + width], digest_size=8).digest()
                        for start in range(0, len(slots), width)])
    keys = np.frombuffer(digests, dtype="<u8").reshape(len(signatures), bands)
    keys = keys >> np.uint64(index_bits) << np.uint64(index_bits) | np.arange(bands, dtype=np.uint64)
    return keys.tolist()


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

    def keys(self, texts: list[str]) -> list[list[int]]:
        """Band keys of each text, the batch's signatures computed at once; pure, so worker processes can
        compute them.

        A text without shingles ("!!! ???", emoji only) has no keys: its all-empty signature
        would otherwise make every such text a near duplicate of the first one.
        """
        signatures = minhash_signatures(texts, self.num_perm, self.shingle_size)
        keys = band_keys(signatures, self.bands, self.rows)
        # A real slot is below 2**32, so an empty one means that no shingle was hashed.
        return [[] if empty else text_keys for empty, text_keys in zip(signatures[:, 0] == _EMPTY_SLOT, keys)]

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
        return band_keys(both.reshape(1, -1), self.bands, 2 * self.rows)[0]

    def is_duplicate(self, keys: list[int]) -> bool:
        """True if any key was seen before; the keys are remembered either way (a later document near this one
        is a duplicate whether this one was kept or not). No keys: never a duplicate, nothing remembered."""
        duplicate = any(key in self._seen for key in keys)
        self._seen.update(keys)
        return duplicate
