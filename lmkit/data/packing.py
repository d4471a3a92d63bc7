"""Training windows from a dataset split: documents packed end to end, and MLM corruption.

Causal LM (Radford et al. 2019; no padding waste): the split's documents are concatenated,
each followed by ``</s>``, and cut into windows of ``seq_len + 1`` tokens that overlap by one,
so window i gives inputs ``w[:-1]`` and targets ``w[1:]``.

Masked LM (Devlin et al. 2019, with RoBERTa's full-sentence packing, Liu et al. 2019): the
documents are joined by ``[SEP]`` and cut into ``seq_len - 2`` token chunks framed as
``[CLS] chunk [SEP]``; 15% of the non-special positions are chosen, of which 80% become
``[MASK]``, 10% a random token and 10% stay; only chosen positions carry a target.

Which windows a step reads depends only on (seed, step): resuming at a step reads exactly
what an uninterrupted run would have, on any rank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
import torch

from lmkit.artifacts import Artifact
from lmkit.data.shards import read_split, token_lists
from lmkit.errors import UserError
from lmkit.vocab import EOS_ID, IGNORE_INDEX, LMKIT, Specials



@dataclass
class TokenStream:
    """A token stream held in RAM (one int32 array): documents each followed by a separator. Tests and
    small in-memory sources use it; datasets on disk are read lazily by :class:`ShardStream`."""

    tokens: np.ndarray
    documents: int
    text_bytes: int

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def bytes_per_token(self) -> float:
        return self.text_bytes / max(len(self), 1)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at these stream positions (any shape), as int64."""
        return self.tokens[positions].astype(np.int64)


class ShardStream:
    """A split's documents, each followed by ``separator``, as one virtual stream over the memory-mapped
    shards: nothing is copied. Per record batch it keeps the mapped offsets and values and one int64 start
    per document (8 bytes a document, against 4 bytes a token for the stream in RAM), so a process's memory
    does not grow with the corpus and a rank touches only the pages of the windows it reads.

    Stream layout, per record batch: document i (tokens values[offsets[i]:offsets[i+1]]) starts at
    offsets[i] - offsets[0] + i, relative to the batch's first position, and its separator follows it."""

    def __init__(self, splits: list, separator: int = EOS_ID):
        self.separator = separator
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (mapped offsets and values, starts)
        self._batches = []  # keeps the memory-mapped record batches alive
        starts = [0]
        self.documents = self.text_bytes = 0
        for split in splits:
            for batch in split.batches():
                if batch.num_rows == 0:
                    continue
                offsets, values = token_lists(batch.column("tokens"))
                doc_starts = offsets[:-1].astype(np.int64) - int(offsets[0]) + np.arange(batch.num_rows)
                self._parts.append((offsets, values, doc_starts))
                self._batches.append(batch)
                starts.append(starts[-1] + int(offsets[-1] - offsets[0]) + batch.num_rows)
                self.documents += batch.num_rows
                self.text_bytes += int(pc.sum(batch.column("n_bytes")).as_py() or 0)
        self._starts = np.asarray(starts, dtype=np.int64)  # stream position where each part begins
        self.length = int(self._starts[-1])

    def __len__(self) -> int:
        return self.length

    @property
    def bytes_per_token(self) -> float:
        return self.text_bytes / max(len(self), 1)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at these stream positions (any shape), as int64: read from the mapped shards."""
        flat = np.asarray(positions, dtype=np.int64).ravel()
        if len(flat) and (flat.min() < 0 or flat.max() >= self.length):
            raise IndexError(f"stream positions outside [0, {self.length})")
        out = np.full(len(flat), self.separator, dtype=np.int64)
        part_of = np.searchsorted(self._starts, flat, side="right") - 1
        for part in np.unique(part_of):
            offsets, values, doc_starts = self._parts[part]
            chosen = np.flatnonzero(part_of == part)
            relative = flat[chosen] - self._starts[part]
            doc = np.searchsorted(doc_starts, relative, side="right") - 1
            within = relative - doc_starts[doc]
            first = offsets[doc].astype(np.int64)
            is_token = within < offsets[doc + 1] - first  # else: the separator after the document
            out[chosen[is_token]] = values[first[is_token] + within[is_token]]
        return out.reshape(np.shape(positions))


Stream = TokenStream | ShardStream  # what the windows read: .gather(positions), len(), documents, text_bytes


def load_stream(dataset: Artifact | list[Artifact], split: str, separator: int = EOS_ID) -> ShardStream:
    """A split's shards (of one dataset, or several concatenated) as a lazy :class:`ShardStream`."""
    datasets = dataset if isinstance(dataset, list) else [dataset]
    chosen = [read_split(d, split) for d in datasets]
    if sum(s.documents for s in chosen) == 0:
        raise UserError(f"{datasets[0].path}: has no {split} documents (see `lmkit info {datasets[0].path}`)")
    return ShardStream(chosen, separator)


def read_stream(dataset: Artifact, split: str, separator: int = EOS_ID) -> TokenStream:
    """The same stream as :func:`load_stream`, copied into RAM (4 bytes a token)."""
    stream = load_stream(dataset, split, separator)
    return TokenStream(stream.gather(np.arange(len(stream))).astype(np.int32), stream.documents, stream.text_bytes)


def causal_window_count(stream_tokens: int, seq_len: int) -> int:
    """Windows of seq_len + 1 tokens at stride seq_len in a stream of this many tokens (separators included)."""
    return (stream_tokens - 1) // seq_len


def masked_window_count(stream_tokens: int, seq_len: int) -> int:
    """[CLS] chunk [SEP] windows of seq_len tokens in a stream of this many tokens."""
    return stream_tokens // (seq_len - 2)


class CausalWindows:
    """Windows of ``seq_len + 1`` tokens at stride ``seq_len`` over a token stream."""

    def __init__(self, stream: TokenStream, seq_len: int):
        self.stream, self.seq_len = stream, seq_len
        self.count = causal_window_count(len(stream), seq_len)

    def sample(self, seed: int, start: int, length: int) -> np.ndarray:
        """The windows read at global sample positions [start, start + length)."""
        return sample_indices(self.count, seed, start, length)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        starts = indices[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        windows = torch.from_numpy(self.stream.gather(starts))
        return windows[:, :-1], windows[:, 1:]


@dataclass(frozen=True)
class MaskingSettings:
    probability: float = 0.15
    replace_mask: float = 0.8     # of chosen positions: become [MASK]
    replace_random: float = 0.1   # of chosen positions: become a random text token; the rest stay


class MaskedWindows:
    """``[CLS] chunk [SEP]`` windows of ``seq_len`` tokens, corrupted for masked-LM training."""

    def __init__(self, stream: TokenStream, seq_len: int, vocab_size: int, masking: MaskingSettings,
                 specials: Specials = LMKIT):
        self.stream, self.seq_len, self.vocab_size, self.masking = stream, seq_len, vocab_size, masking
        self.specials = specials
        self.cls, self.sep = specials.require("cls", "masked-LM windows"), specials.require("sep", "masked-LM windows")
        self.chunk = seq_len - 2
        self.count = masked_window_count(len(stream), seq_len)

    def sample(self, seed: int, start: int, length: int) -> np.ndarray:
        return sample_indices(self.count, seed, start, length)

    def batch(self, indices: np.ndarray, generator: torch.Generator | list[torch.Generator]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Corrupted windows; with one generator per row, each row's masks depend on its own generator only,
        so a sample is masked alike whatever micro-batch (size) it falls into."""
        starts = indices[:, None] * self.chunk + np.arange(self.chunk)[None, :]
        body = torch.from_numpy(self.stream.gather(starts))
        rows = len(indices)
        clean = torch.cat([torch.full((rows, 1), self.cls), body, torch.full((rows, 1), self.sep)], dim=1)
        if not isinstance(generator, list):
            return mask_tokens(clean, self.vocab_size, self.masking, generator, self.specials)
        pairs = [mask_tokens(clean[row:row + 1], self.vocab_size, self.masking, generator[row], self.specials)
                 for row in range(rows)]
        return torch.cat([a for a, _ in pairs]), torch.cat([b for _, b in pairs])


def mask_tokens(tokens: torch.Tensor, vocab_size: int, masking: MaskingSettings, generator: torch.Generator,
                specials: Specials = LMKIT) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption; returns (inputs, targets) with IGNORE_INDEX where not chosen. Special
    tokens are never chosen; a random replacement is a text token (lmkit's ids 0..6 are specials; an
    imported vocabulary's specials are redrawn as the token itself, so they are left alone too)."""
    mask_id = specials.require("mask", "masked-LM corruption")
    special_ids = torch.tensor(sorted(specials.ids), dtype=tokens.dtype)
    maskable = ~torch.isin(tokens, special_ids)
    draw = torch.rand(tokens.shape, generator=generator)
    chosen = maskable & (draw < masking.probability)
    # A row with nothing chosen would give an empty (NaN) loss: choose its lowest draw instead.
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)
    if empty.any():
        lowest = torch.where(maskable, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        chosen[empty, lowest[empty]] = True
    action = torch.rand(tokens.shape, generator=generator)
    random_tokens = torch.randint(specials.text_start, vocab_size, tokens.shape, generator=generator)
    if specials.text_start == 0:  # specials among the text ids: a drawn one stays the original token
        random_tokens = torch.where(torch.isin(random_tokens, special_ids), tokens, random_tokens)
    inputs = tokens.clone()
    to_mask = chosen & (action < masking.replace_mask)
    to_random = chosen & (action >= masking.replace_mask) & (action < masking.replace_mask + masking.replace_random)
    inputs[to_mask] = mask_id
    inputs[to_random] = random_tokens[to_random]
    targets = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return inputs, targets


def seeded_generator(seed: int, *key: int) -> torch.Generator:
    """A torch generator whose stream depends only on (seed, key): e.g. the masks or augmentation of the
    sample at a global position, the same in a resumed run."""
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))
    return generator


@functools.lru_cache(maxsize=2)
def _permutation(count: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(count)


def sample_indices(count: int, seed: int, start: int, length: int) -> np.ndarray:
    """Window indices for global sample positions [start, start + length): epoch after epoch,
    each epoch a permutation seeded by (seed, epoch). Pure: no state to save for resume."""
    positions = np.arange(start, start + length)
    epochs = positions // count
    result = np.empty(length, dtype=np.int64)
    for epoch in np.unique(epochs):
        permutation = _permutation(count, seed, int(epoch))
        selected = epochs == epoch
        result[selected] = permutation[positions[selected] % count]
    return result


# -- mixtures of datasets --------------------------------------------------------------------------
MIXTURE_PERIOD = 4096  # sample positions per round of the mixture's schedule


class Mixture:
    """Windows of several sources (each a CausalWindows or MaskedWindows) sampled with fixed shares.

    A seeded schedule of MIXTURE_PERIOD positions holds each source in proportion to its share (largest
    remainders, at least one position for a source with a share); it repeats round after round. The
    source at global position p is schedule[p % period], and it is that source's k-th draw, k counted
    from the schedule alone, so the window read is sample_indices of that source at k: epoch after epoch
    of its own seeded permutations. All of it is a pure function of (seed, p): resume needs no state, and
    each source's epochs follow from the number of positions trained (epochs())."""

    def __init__(self, parts: list, shares: list[float], seed: int):
        if len(parts) != len(shares) or not parts:
            raise ValueError("a mixture needs one share per source")
        self.parts, self.seed = parts, seed
        total = float(sum(shares))
        exact = [MIXTURE_PERIOD * share / total for share in shares]
        slots = [int(x) for x in exact]
        for i in sorted(range(len(exact)), key=lambda i: exact[i] - slots[i], reverse=True):
            if sum(slots) >= MIXTURE_PERIOD:
                break
            slots[i] += 1
        for i, share in enumerate(shares):  # a source with a share gets at least one slot
            if share > 0 and slots[i] == 0:
                slots[i] = 1
                slots[int(np.argmax(slots))] -= 1
        self.slots = slots
        schedule = np.repeat(np.arange(len(parts)), slots)
        self.schedule = np.random.default_rng([seed, 0x6D6978]).permutation(schedule)  # "mix"
        self.period = len(self.schedule)
        # before[i, j]: positions of source i among schedule[:j]
        self.before = np.zeros((len(parts), self.period + 1), dtype=np.int64)
        for i in range(len(parts)):
            self.before[i, 1:] = np.cumsum(self.schedule == i)
        self.count = sum(part.count for part in parts)  # an "epoch" of the mixture: every source's windows once
        self.shares = [slot / self.period for slot in slots]

    def sample(self, seed: int, start: int, length: int) -> np.ndarray:
        return np.arange(start, start + length, dtype=np.int64)  # positions: batch() finds their windows

    def draws(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(source, its draw number) of each global position."""
        rounds, offset = np.divmod(positions, self.period)
        source = self.schedule[offset]
        slots = np.asarray(self.slots)[source]
        return source, rounds * slots + self.before[source, offset]

    def batch(self, positions: np.ndarray, *args) -> tuple[torch.Tensor, torch.Tensor]:
        source, draw = self.draws(positions)
        rows: list = [None] * len(positions)
        for i in np.unique(source):
            chosen = np.flatnonzero(source == i)
            windows = np.concatenate([sample_indices(self.parts[i].count, self.seed + 7919 * (int(i) + 1), int(k), 1)
                                      for k in draw[chosen]])
            # per-row arguments (a masked source's generators) follow their rows
            part_args = [[arg[row] for row in chosen] if isinstance(arg, list) else arg for arg in args]
            part_inputs, part_targets = self.parts[i].batch(windows, *part_args)
            for row, a, b in zip(chosen, part_inputs, part_targets):
                rows[row] = (a, b)
        inputs = torch.stack([a for a, _ in rows])
        targets = torch.stack([b for _, b in rows])
        return inputs, targets

    def epochs(self, samples: int) -> list[float]:
        """Each source's epochs (its windows read / its window count) after ``samples`` positions."""
        if samples <= 0:
            return [0.0] * len(self.parts)
        rounds, offset = divmod(samples, self.period)
        return [(rounds * self.slots[i] + int(self.before[i, offset])) / max(part.count, 1)
                for i, part in enumerate(self.parts)]
