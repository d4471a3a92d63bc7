"""Sentence-pair windows for the encoder's sentence-level pretraining objectives, next to masked LM.

* NSP, BERT's next-sentence prediction (Devlin et al. 2019): segment B follows segment A in the text
  (label 0) or, half the time, starts at a sentence of another document (label 1).
* SOP, ALBERT's sentence-order prediction (Lan et al. 2020): A and B are consecutive segments of one
  document, in their order (label 0) or, half the time, swapped (label 1). Both come from the same
  document, so topic alone cannot tell them apart: only coherence can.

A training sample is a sentence boundary of the training split: a token that starts a sentence after
another sentence of the same document (after a sentence-ending piece, before a word start or a line break;
a line break alone is no boundary, as wrapped prose breaks lines inside sentences).
Segment A is the whole sentences before the boundary and B the whole sentences after it (or,
for an NSP negative, after a boundary of another document), as many as fit ``seq_len - 3`` tokens: A
takes what leaves room for B's first sentence, B the rest. Whole sentences matter: a segment cut inside a
sentence would tell the order by where it is cut (a text that starts mid-sentence comes second), and SOP
would learn that instead of coherence. Only a sentence longer than its room is cut. The pair is framed as
``[CLS] A [SEP] B [SEP]`` with segment ids 0 then 1, padded to ``seq_len`` and corrupted for masked LM
as packed windows are. The boundaries are found once, in one pass over the split (8 bytes a sentence, plus
4 for its document); the tokens are read lazily per window, like every other objective's.

Which boundary a sample reads, whether it is swapped or given a random B, and its masks depend only on
(seed, its global sample position): a resumed run reads exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmkit.data.packing import MaskingSettings, ShardStream, mask_tokens, sample_indices, seeded_generator
from lmkit.vocab import Specials

SENTENCE_TASKS = ("nsp", "sop")
_PAIR_KEY = 0x736F70  # "sop": the pair draws' stream, apart from the same position's masks
_NEGATIVE_TRIES = 10   # NSP: draws of a boundary in another document before giving up (label 0)
_SENTENCE_END = (".", "!", "?")


@dataclass(frozen=True)
class PieceClasses:
    """Per token id (arrays of the vocabulary's size): pieces that end a sentence (a final . ! ?), pieces
    that start a word, and line breaks."""

    ends: np.ndarray
    starts: np.ndarray
    breaks: np.ndarray


def piece_classes(pieces: list[str], specials: Specials) -> PieceClasses:
    """The classes of a vocabulary's ``pieces`` (SentencePiece's ``▁word`` and byte ``<0x0A>``, GPT-2's
    ``Ġword`` and ``Ċ``, WordPiece's ``##`` continuations); special tokens are in none."""
    wordpiece = sum(piece.startswith("##") for piece in pieces) > len(pieces) // 10
    ends = np.zeros(len(pieces), dtype=bool)
    starts, breaks = ends.copy(), ends.copy()
    for token_id, piece in enumerate(pieces):
        if token_id in specials.ids:
            continue
        breaks[token_id] = piece == "<0x0A>" or piece.endswith(("\n", "Ċ"))
        ends[token_id] = piece.rstrip().endswith(_SENTENCE_END)
        starts[token_id] = piece.startswith(("▁", "Ġ")) or (wordpiece and not piece.startswith("##"))
    return PieceClasses(ends, starts, breaks)


@dataclass(frozen=True)
class Boundaries:
    """The sentence boundaries of a stream: each one's stream position (its sentence's first token) and
    its document's index."""

    positions: np.ndarray
    documents: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def document_count(self) -> int:
        """Documents with at least one boundary (two sentences or more)."""
        return len(np.unique(self.documents))


def find_boundaries(stream: ShardStream, classes: PieceClasses, block: int = 1 << 22) -> Boundaries:
    """Every sentence boundary of ``stream``, read in blocks of ``block`` tokens (one pass)."""
    starts, lengths = stream.document_spans()
    found: list[np.ndarray] = []
    for low in range(0, len(stream), block):
        high = min(low + block + 1, len(stream))  # one token past the block: the next token's class
        tokens = stream.gather(np.arange(low, high))
        before, after = tokens[:-1], tokens[1:]
        # not every line break: prose is often wrapped mid-sentence (docstrings, manual pages)
        cut = classes.ends[before] & (classes.starts[after] | classes.breaks[after])
        found.append(low + 1 + np.flatnonzero(cut))
    positions = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
    documents = np.searchsorted(starts, positions, side="right") - 1
    within = positions - starts[documents]
    inside = (within > 0) & (within < lengths[documents])  # text on both sides, in one document
    return Boundaries(positions[inside].astype(np.int64), documents[inside].astype(np.int32))


@dataclass
class PairBatch:
    inputs: torch.Tensor             # (B, T) corrupted ids
    targets: torch.Tensor            # (B, T) masked-LM targets, IGNORE_INDEX where not chosen
    token_types: torch.Tensor        # (B, T) 0 for [CLS] A [SEP], 1 for B [SEP] (and padding)
    attention_mask: torch.Tensor     # (B, T) True on real tokens
    labels: torch.Tensor             # (B,) 0: A then B as in the text; 1: swapped (SOP) or a random B (NSP)


class SentencePairs:
    """``[CLS] A [SEP] B [SEP]`` windows at the sentence boundaries of a stream, for NSP or SOP."""

    def __init__(self, stream: ShardStream, boundaries: Boundaries, task: str, seq_len: int, vocab_size: int,
                 masking: MaskingSettings, specials: Specials):
        if task not in SENTENCE_TASKS:
            raise ValueError(f"unknown sentence task {task!r}")
        self.stream, self.boundaries, self.task, self.seq_len = stream, boundaries, task, seq_len
        self.vocab_size, self.masking, self.specials = vocab_size, masking, specials
        self.cls = specials.require("cls", "sentence-pair windows")
        self.sep = specials.require("sep", "sentence-pair windows")
        self.room = seq_len - 3
        self.count = len(boundaries)
        self._doc_starts, lengths = stream.document_spans()
        self._doc_ends = self._doc_starts + lengths

    def sample(self, seed: int, start: int, length: int) -> np.ndarray:
        return sample_indices(self.count, seed, start, length)

    def _sentences(self, document: int) -> tuple[int, int]:
        """The range of boundary indices in ``document`` (boundaries are in stream order)."""
        documents = self.boundaries.documents
        return (int(np.searchsorted(documents, document, side="left")),
                int(np.searchsorted(documents, document, side="right")))

    def _first_sentence(self, index: int) -> int:
        """Tokens of the sentence that starts at boundary ``index``."""
        document = int(self.boundaries.documents[index])
        _, high = self._sentences(document)
        end = self.boundaries.positions[index + 1] if index + 1 < high else self._doc_ends[document]
        return int(end - self.boundaries.positions[index])

    def _segment_b(self, index: int, budget: int) -> tuple[int, int]:
        """(start, length) of B: the whole sentences from boundary ``index`` that fit ``budget`` tokens (at least
        its first sentence, cut to the budget when longer)."""
        start, document = int(self.boundaries.positions[index]), int(self.boundaries.documents[index])
        _, high = self._sentences(document)
        ends = np.append(self.boundaries.positions[index + 1:high], self._doc_ends[document])  # sentence ends
        fitting = ends[ends - start <= budget]
        return start, int(fitting[-1] - start) if len(fitting) else budget

    def _second(self, index: int, generator: torch.Generator) -> tuple[int, int]:
        """(the boundary B starts at, label) for the sample at boundary ``index``."""
        document = int(self.boundaries.documents[index])
        coin = float(torch.rand((), generator=generator))
        if self.task == "nsp" and coin < 0.5:
            for _ in range(_NEGATIVE_TRIES):
                other = int(torch.randint(self.count, (), generator=generator))
                if int(self.boundaries.documents[other]) != document:
                    return other, 1
        return index, int(self.task == "sop" and coin < 0.5)

    def batch(self, indices: np.ndarray, seed: int, keys: list[tuple[int, ...]]) -> PairBatch:
        """The windows of boundaries ``indices``; ``keys``: each row's identity (its global sample position),
        which alone seeds its pair draws and its masks."""
        rows = len(indices)
        a_start, a_len = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        b_start, b_len = np.zeros(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
        labels = np.zeros(rows, dtype=np.int64)
        positions = self.boundaries.positions
        for row, (index, key) in enumerate(zip(indices, keys)):
            index = int(index)
            position, document = int(positions[index]), int(self.boundaries.documents[index])
            second, labels[row] = self._second(index, seeded_generator(seed, *key, _PAIR_KEY))
            # A: the whole sentences before the boundary that leave room for B's first sentence (at least half
            # the room is A's when that sentence is long)
            budget = self.room - min(self._first_sentence(second), self.room // 2)
            low, _ = self._sentences(document)
            starts = np.append(self._doc_starts[document], positions[low:index])  # sentence starts before it
            fitting = starts[position - starts <= budget]
            a_len[row] = position - int(fitting[0]) if len(fitting) else budget
            a_start[row] = position - a_len[row]
            b_start[row], b_len[row] = self._segment_b(second, self.room - int(a_len[row]))
        offsets = np.arange(self.room)
        # each segment read as its own contiguous span (an NSP B may lie far from A); past its end, repeat its end
        a = self.stream.gather(a_start[:, None] + np.minimum(offsets[None, :], np.maximum(a_len, 1)[:, None] - 1))
        b = self.stream.gather(b_start[:, None] + np.minimum(offsets[None, :], np.maximum(b_len, 1)[:, None] - 1))
        ids = np.full((rows, self.seq_len), self.specials.pad, dtype=np.int64)
        types = np.zeros((rows, self.seq_len), dtype=np.int64)
        real = np.zeros((rows, self.seq_len), dtype=bool)
        for row in range(rows):
            first, second = a[row, :a_len[row]], b[row, :b_len[row]]
            if self.task == "sop" and labels[row]:
                first, second = second, first
            framed = np.concatenate([[self.cls], first, [self.sep], second, [self.sep]])
            ids[row, :len(framed)] = framed
            types[row, len(first) + 2:len(framed)] = 1
            real[row, :len(framed)] = True
        clean = torch.from_numpy(ids)
        inputs, targets = mask_tokens(clean, self.vocab_size, self.masking,
                                      [seeded_generator(seed, *key) for key in keys], self.specials)
        return PairBatch(inputs, targets, torch.from_numpy(types), torch.from_numpy(real), torch.from_numpy(labels))
