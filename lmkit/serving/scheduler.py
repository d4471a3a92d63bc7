"""Continuous batching (Orca, Yu et al. 2022; vLLM, Kwon et al. 2023): the completion rows of every request decode
in one running batch that changes at each step. A waiting row takes a free slot of the KV cache (one per
``--max-batch`` row, each as long as the model's context) at the next step; its prompt is read in chunks of at
most ``prefill_chunk`` tokens a step (all rows together), so that a long prompt delays the running rows by one
chunk a step, not by its whole length (Sarathi, Agrawal et al. 2023); a row that ends, or whose client went away,
frees its slot at once. Each row keeps its own sampling settings, stop strings and generator, so requests of
different settings share a step, and a row's tokens are those ``lmkit generate`` draws for the same seed (up to
the rounding of a batched matrix product). A prompt's beginning already computed for another request (prefix.py)
is copied into its slot instead of computed again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import count

import torch

from lmkit.generation.decode import STOP_CONTEXT, STOP_EOS, STOP_LENGTH, STOP_STRING
from lmkit.generation.sampling import next_tokens_per_row
from lmkit.generation.settings import SamplingSettings
from lmkit.generation.text import CompletionText
from lmkit.serving.jobs import COMPLETE, FINISH, Job, Row
from lmkit.serving.prefix import PrefixCache
from lmkit.vocab import PAD_ID


@dataclass
class Sequence:
    """A row in a slot: its prompt (read so far: ``done`` tokens), then the token the next step feeds."""

    job: Job
    row: Row
    settings: SamplingSettings
    digests: list[bytes]         # the prompt's reusable blocks (PrefixCache.digests)
    text: CompletionText
    budget: int                  # new tokens at most: max_new_tokens, or fewer where the context ends
    order: int                   # admission order: prompts are read first come, first served
    slot: int = -1
    done: int = 0                # prompt tokens in the slot (copied from the prefix cache or computed)
    next_token: int | None = None  # the last new token, which the next step feeds (None while reading the prompt)
    reason: str | None = None    # why it ended (decode's STOP_*), once it has
    stored: int = 0              # the prompt's blocks offered to the prefix cache so far

    @property
    def prompt(self) -> list[int]:
        return self.row.ids


@dataclass
class Chunk:
    """Prompt tokens of one row to read in this step."""

    sequence: Sequence
    width: int
    ids: list[int] = field(default_factory=list)


class Scheduler:
    """The running batch of a text model (GPT) that ``step`` advances by one token a row; ``add`` queues a
    completion job's rows. The engine's worker thread alone calls it."""

    def __init__(self, decoder, slots: int, prefill_chunk: int, prefix_tokens: int):
        self.decoder, self.model = decoder, decoder.model
        self.slots, self.prefill_chunk = slots, prefill_chunk
        self.cache = self.model.new_slots(slots)
        self.block_size = self.model.config.block_size
        self.rows: list[Sequence] = []  # rows[i] holds slot i: the occupied slots are always 0 .. len(rows) - 1
        self.waiting: deque[tuple[Job, Row]] = deque()
        self.waiting_jobs = 0  # jobs none of whose rows has a slot yet (the engine's pending count)
        self.prefix = PrefixCache(prefix_tokens)
        device = self.model.tok_emb.weight.device
        self.seen = torch.zeros((slots, self.model.config.vocab_size), dtype=torch.bool, device=device)
        # The decoding steps run compiled where the Generator compiled its step (--compile); prompts eagerly.
        self.encode_step = decoder.encode_step or self.model.encode
        self.stops = frozenset(decoder.stop_ids)
        self.banned = list(decoder.banned)
        self._order = count()

    @property
    def busy(self) -> bool:
        return bool(self.rows or self.waiting)

    def add(self, job: Job) -> None:
        if any(not 0 < len(row.ids) < self.block_size for row in job.payload):  # the HTTP side refuses them first
            job.resolve(error=ValueError(f"every prompt needs 1 to {self.block_size - 1} tokens"))
            return
        job.unfinished = len(job.payload)
        self.waiting.extend((job, row) for row in job.payload)
        self.waiting_jobs += 1

    @torch.no_grad()
    def step(self) -> None:
        """Free the slots of abandoned requests, give free slots to waiting rows, read up to prefill_chunk prompt
        tokens, decode one token of every row past its prompt, and free the slots of the rows that ended."""
        for index in reversed(range(len(self.rows))):
            if self.rows[index].job.cancelled:
                self._free(index)
        self._admit()
        decoding = [sequence for sequence in self.rows if sequence.next_token is not None]
        states, sequences = self._read_prompts()  # rows whose prompt is now read, and their last states
        if decoding:
            idx = torch.tensor([[s.next_token] for s in decoding], device=self.seen.device)  # (B, 1)
            states.append(self._encode(idx, decoding, [1] * len(decoding), self.encode_step)[:, -1])  # (B, C)
            sequences += decoding
        if not sequences:
            return
        logits = self.model.lm_head(self.model.head_input(torch.cat(states))).float()  # (b, V)
        if self.banned:
            logits[:, self.banned] = float("-inf")
        settings = [s.settings for s in sequences]
        slots = torch.tensor([s.slot for s in sequences], device=logits.device)
        seen = self.seen[slots] if any(each.repetition_penalty != 1.0 for each in settings) else None
        chosen = next_tokens_per_row(logits, settings, seen, [s.row.generator for s in sequences])
        for sequence, token in zip(sequences, chosen.tolist(), strict=True):
            self._take(sequence, token)
        self.seen[slots, chosen] = True  # rows that ended are cleared when their slot is taken again
        for index in reversed(range(len(self.rows))):
            if self.rows[index].reason is not None:
                self._finish(self.rows[index])
                self._free(index)

    def warm_up(self) -> None:
        """Run small requests of the engine's own through every kind of step (one row; rows of equal lengths, of
        different lengths, and with a row still reading its prompt between decoding ones), without stop ids or the
        prefix cache: a compiled step then does its compiles and recompiles now, not in a user's request."""
        stops, chunk, capacity = self.stops, self.prefill_chunk, self.prefix.capacity
        self.stops, self.prefix.capacity = frozenset(), 0
        try:
            for lengths, chunk_size in (((2,), chunk), ((2, 2), chunk), ((3, 2), chunk), ((2, 2, 2), chunk),
                                        ((3, 2, 4), chunk), ((2, 3, 2, 4, 2), 1)):
                self.prefill_chunk = chunk_size
                for index, length in enumerate(lengths):
                    settings = SamplingSettings(max_new_tokens=4 + index, temperature=0)
                    self.add(Job(COMPLETE, [Row([self.decoder.start] * length, torch.Generator())], settings))
                while self.busy:
                    self.step()
        finally:
            self.stops, self.prefill_chunk, self.prefix.capacity = stops, chunk, capacity

    def fail(self, error: BaseException) -> None:
        """Answer every request in the batch or waiting with ``error`` (a bug in a step) and start afresh."""
        jobs = {id(s.job): s.job for s in self.rows} | {id(job): job for job, _ in self.waiting}
        for job in jobs.values():
            job.resolve(error=error)
        while self.rows:
            self._free(len(self.rows) - 1)
        self.waiting.clear()
        self.waiting_jobs = 0

    # -- the steps' parts ------------------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting and len(self.rows) < self.slots:
            job, row = self.waiting.popleft()
            if row is job.payload[0]:  # the job's first row to leave the queue: the job is no longer waiting
                self.waiting_jobs -= 1
            if job.cancelled:
                continue
            settings = job.settings
            slot = len(self.rows)
            sequence = Sequence(job, row, settings, self.prefix.digests(row.ids),
                                CompletionText(self.decoder.tokenizer, row.ids[-1], settings.stop, row.on_text),
                                min(settings.max_new_tokens, self.block_size - len(row.ids)), next(self._order), slot)
            self.rows.append(sequence)
            self.seen[slot] = False
            self.seen[slot, torch.tensor(row.ids, device=self.seen.device)] = True
            found = self.prefix.lookup(sequence.digests)
            if found:  # (n_layer, 2, nh, tokens, hd): the prompt's first blocks, computed before
                self.cache.write(slot, 0, torch.cat(found, dim=3))
                sequence.done = sequence.stored = len(found) * self.prefix.block
            else:
                self.cache.lengths[slot] = 0

    def _read_prompts(self) -> tuple[list[torch.Tensor], list[Sequence]]:
        """Read the next prompt tokens of the rows still reading theirs, oldest first, at most prefill_chunk in
        all: the states (b, C) of the rows whose prompt ends here, at its last token, and those rows."""
        budget, chunks = self.prefill_chunk, []
        for sequence in sorted((s for s in self.rows if s.next_token is None), key=lambda s: s.order):
            if budget == 0:
                break
            width = min(len(sequence.prompt) - sequence.done, budget)
            chunks.append(Chunk(sequence, width, sequence.prompt[sequence.done:sequence.done + width]))
            budget -= width
        states, ended = [], []
        for group in _groups(chunks):
            T = group[0].width
            idx = torch.tensor([chunk.ids + [PAD_ID] * (T - chunk.width) for chunk in group],
                               device=self.seen.device)  # (b, T), each row's tokens first
            sequences = [chunk.sequence for chunk in group]
            hidden = self._encode(idx, sequences, [chunk.width for chunk in group])  # (b, T, C)
            for row, chunk in enumerate(group):
                sequence = chunk.sequence
                sequence.done += chunk.width
                self._offer(sequence)
                if sequence.done == len(sequence.prompt):
                    states.append(hidden[row, chunk.width - 1][None])  # (1, C)
                    ended.append(sequence)
        return states, ended

    def _encode(self, idx: torch.Tensor, sequences: list[Sequence], widths: list[int], encode=None) -> torch.Tensor:
        rows = [s.slot for s in sequences]
        hidden = (encode or self.model.encode)(idx, cache=self.cache.batch(rows, widths))  # (b, T, C)
        self.cache.extend(rows, widths)
        return hidden

    def _offer(self, sequence: Sequence) -> None:
        """Give the prefix cache the prompt's blocks the slot now holds (from the first: a chain)."""
        held = min(sequence.done // self.prefix.block, len(sequence.digests))
        if held > sequence.stored:
            block, slot = self.prefix.block, sequence.slot
            self.prefix.store(sequence.digests[:held],
                              lambda index: self.cache.read(slot, index * block, (index + 1) * block))
            sequence.stored = held

    def _take(self, sequence: Sequence, token: int) -> None:
        """A row's new token, as decode() takes it: a stop id ends it (not kept), then a stop string, its budget."""
        if token in self.stops:
            sequence.reason = STOP_EOS
            return
        new_ids = sequence.row.new_ids
        new_ids.append(token)
        watch = bool(sequence.settings.stop) or sequence.row.on_text is not None
        if watch and sequence.text.update(new_ids):
            sequence.reason = STOP_STRING
        elif len(new_ids) >= sequence.budget:
            sequence.reason = STOP_LENGTH if len(new_ids) >= sequence.settings.max_new_tokens else STOP_CONTEXT
        else:
            sequence.next_token = token

    def _finish(self, sequence: Sequence) -> None:
        row = sequence.row
        sequence.text.update(row.new_ids)
        row.text, row.finish = sequence.text.finish(), FINISH[sequence.reason]
        sequence.job.unfinished -= 1
        if sequence.job.unfinished == 0:
            sequence.job.resolve(sequence.job.payload)

    def _free(self, index: int) -> None:
        """Empty slot ``index``: the last occupied slot's row moves into it, so the occupied slots stay 0 .. n - 1
        (a decoding step then reads its rows' keys in place, without gathering them)."""
        last = len(self.rows) - 1
        if index != last:
            self.cache.move(last, index)
            self.seen[index] = self.seen[last]
            self.rows[index] = self.rows[last]
            self.rows[index].slot = index
        else:
            self.cache.lengths[last] = 0
        self.rows.pop()


def _groups(chunks: list[Chunk]) -> list[list[Chunk]]:
    """The chunks of a step in model calls: the longest first, each call padded to its longest chunk, and a
    chunk joining a call only while the call's padding stays at most its real tokens."""
    groups: list[list[Chunk]] = []
    for chunk in sorted(chunks, key=lambda c: -c.width):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * group[0].width <= 2 * (sum(c.width for c in group) + chunk.width):
            group.append(chunk)
        else:
            groups.append([chunk])
    return groups
