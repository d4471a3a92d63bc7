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
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from lmkit.artifacts import Artifact
from lmkit.data.shards import read_split
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
    """A split's documents, each followed by ``separator``, as one virtual stream over the shard files, read
    with ``pread`` where a window lies: nothing is copied into RAM but 24 bytes a document (its stream start,
    its first token's place in its file, its length and file), against 4 bytes a token for the stream in RAM.
    The files are not kept mapped: a mapped page that a read touched would count in the process's resident
    memory (with the kernel's fault-around, 64 KB a window), which then grew with the run towards the size of
    the dataset; read pages stay in the kernel's shared page cache instead. Every rank reads only its windows.

    Document i of the stream starts at position doc_starts[i]; its separator follows its tokens."""

    def __init__(self, splits: list, separator: int = EOS_ID):
        self.separator = separator
        self.paths: list[str] = []
        self._dtypes: list[np.dtype] = []
        starts, places, lengths, files = [], [], [], []
        position = 0
        self.documents = self.text_bytes = 0
        for split in splits:
            for path in split.paths:
                source = pa.memory_map(str(path), "r")  # to find where each batch's tokens lie in the file
                base = source.read_buffer().address
                reader = pa.ipc.open_file(source)
                self.paths.append(str(path))
                dtype = np.dtype(reader.schema.field("tokens").type.value_type.to_pandas_dtype())
                self._dtypes.append(dtype)
                for index in range(reader.num_record_batches):
                    batch = reader.get_batch(index)
                    if batch.num_rows == 0:
                        continue
                    column = batch.column("tokens")
                    values = column.values
                    first = values.buffers()[1].address - base + values.offset * dtype.itemsize
                    offsets = column.offsets.to_numpy().astype(np.int64)
                    length = np.diff(offsets)
                    starts.append(position + offsets[:-1] - offsets[0] + np.arange(batch.num_rows))
                    places.append(first + offsets[:-1] * dtype.itemsize)
                    lengths.append(length.astype(np.int32))
                    files.append(np.full(batch.num_rows, len(self.paths) - 1, dtype=np.int32))
                    position += int(length.sum()) + batch.num_rows
                    self.documents += batch.num_rows
                    self.text_bytes += int(pc.sum(batch.column("n_bytes")).as_py() or 0)
                del reader, source  # unmapped: the pages read above leave this process
        empty = np.zeros(0, dtype=np.int64)
        self._doc_starts = np.concatenate(starts) if starts else empty
        self._places = np.concatenate(places) if places else empty
        self._lengths = np.concatenate(lengths) if lengths else empty.astype(np.int32)
        self._files = np.concatenate(files) if files else empty.astype(np.int32)
        self.length = position

    def __len__(self) -> int:
        return self.length

    @property
    def bytes_per_token(self) -> float:
        return self.text_bytes / max(len(self), 1)

    def document_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(stream start, length) of every document, its separator not counted."""
        return self._doc_starts, self._lengths.astype(np.int64)

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """The tokens at these stream positions (any shape), as int64. Each row of ``positions`` (a window) is
        read with one ``pread`` per file it lies in, from its first token's byte to its last's."""
        positions = np.asarray(positions, dtype=np.int64)
        flat = positions.ravel()
        if len(flat) and (flat.min() < 0 or flat.max() >= self.length):
            raise IndexError(f"stream positions outside [0, {self.length})")
        out = np.full(len(flat), self.separator, dtype=np.int64)
        doc = np.searchsorted(self._doc_starts, flat, side="right") - 1
        within = flat - self._doc_starts[doc]
        token = np.flatnonzero(within < self._lengths[doc])  # else: the separator after the document
        if len(token) == 0:
            return out.reshape(positions.shape)
        files = self._files[doc[token]]
        row_length = positions.shape[-1] if positions.ndim else 1
        groups = (token // row_length) * len(self.paths) + files  # (row, file): one contiguous read each
        handles: dict[int, int] = {}
        try:
            for group in np.unique(groups):
                chosen = token[groups == group]
                file = int(group % len(self.paths))
                dtype = self._dtypes[file]
                places = self._places[doc[chosen]] + within[chosen] * dtype.itemsize
                low, high = int(places.min()), int(places.max()) + dtype.itemsize
                if file not in handles:
                    handles[file] = os.open(self.paths[file], os.O_RDONLY)
                data = np.frombuffer(os.pread(handles[file], high - low, low), dtype=dtype)
                out[chosen] = data[(places - low) // dtype.itemsize]
        finally:
            for handle in handles.values():
                os.close(handle)
        return out.reshape(positions.shape)


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
    tokens = np.empty(len(stream), dtype=np.int32)
    for start in range(0, len(stream), 1 << 22):  # a bounded int64 temporary at a time
        tokens[start:start + (1 << 22)] = stream.gather(np.arange(start, min(start + (1 << 22), len(stream))))
    return TokenStream(tokens, stream.documents, stream.text_bytes)


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
        return mask_tokens(clean, self.vocab_size, self.masking, generator, self.specials)


def _mask_draws(shape: tuple[int, int], low: int, high: int, generator: torch.Generator | list[torch.Generator]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (choice, action, random token) draws of mask_tokens: from one generator, or row by row from one
    generator per row (each row's draws then depend on its generator alone)."""
    if isinstance(generator, list):
        rows = [_mask_draws((1, shape[1]), low, high, row_generator) for row_generator in generator]
        return tuple(torch.cat(parts) for parts in zip(*rows))  # type: ignore[return-value]
    return (torch.rand(shape, generator=generator), torch.rand(shape, generator=generator),
            torch.randint(low, high, shape, generator=generator))


def mask_tokens(tokens: torch.Tensor, vocab_size: int, masking: MaskingSettings,
                generator: torch.Generator | list[torch.Generator],
                specials: Specials = LMKIT) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption; returns (inputs, targets) with IGNORE_INDEX where not chosen. Special
    tokens are never chosen; a random replacement is a text token (lmkit's ids 0..6 are specials; an
    imported vocabulary's specials are redrawn as the token itself, so they are left alone too). With a list
    of generators, one per row, a row is corrupted alike in any batch (a sample's masks follow its position)."""
    mask_id = specials.require("mask", "masked-LM corruption")
    special_ids = torch.tensor(sorted(specials.ids), dtype=tokens.dtype)
    maskable = ~torch.isin(tokens, special_ids)
    draw, action, random_tokens = _mask_draws(tuple(tokens.shape), specials.text_start, vocab_size, generator)
    chosen = maskable & (draw < masking.probability)
    # A row with nothing chosen would give an empty (NaN) loss: choose its lowest draw instead.
    empty = ~chosen.any(dim=1) & maskable.any(dim=1)
    if empty.any():
        lowest = torch.where(maskable, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        chosen[empty, lowest[empty]] = True
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


class LengthGroupedOrder:
    """Sample positions read in groups of similar length. The positions are cut into buckets of
    ``groups_per_bucket`` steps of ``group`` examples (a step's global batch); a bucket holds the examples
    sample_indices gives its positions (epoch after epoch of seeded permutations), sorted by length, dealt into
    steps in that order, and the steps' order within the bucket shuffled (seeded by the seed and the bucket).
    A batch then pads its texts to nearly one length, and lengths repeat from step to step, while every epoch
    still reads every example once and the order stays random at the scale of buckets (transformers'
    group_by_length does the same with its megabatches).

    A pure function of (seed, position) given the lengths and the global batch: a resumed run reads what the
    uninterrupted one would, whatever its micro-batch, accumulation or processes (an elastic resume keeps
    the global batch)."""

    def __init__(self, lengths: Sequence[int], seed: int, group: int, groups_per_bucket: int = 50):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.seed, self.group, self.size = seed, max(1, group), max(1, group) * max(1, groups_per_bucket)
        self._last: tuple[int, np.ndarray] | None = None  # a step reads one bucket (two at most)

    def bucket(self, number: int) -> np.ndarray:
        """The examples read at the positions of bucket ``number``, in order."""
        if self._last is None or self._last[0] != number:
            examples = sample_indices(len(self.lengths), self.seed, number * self.size, self.size)
            examples = examples[np.argsort(self.lengths[examples], kind="stable")]
            steps = examples.reshape(-1, self.group)
            shuffled = steps[np.random.default_rng([self.seed, number, 1]).permutation(len(steps))]
            self._last = (number, shuffled.reshape(-1))
        return self._last[1]

    def indices(self, start: int, length: int) -> np.ndarray:
        """Example indices for global sample positions [start, start + length)."""
        positions = np.arange(start, start + length)
        result = np.empty(length, dtype=np.int64)
        for number in np.unique(positions // self.size):
            selected = positions // self.size == number
            result[selected] = self.bucket(int(number))[positions[selected] % self.size]
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
