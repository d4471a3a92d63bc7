"""The model side of ``lmkit serve``: one worker thread owns the model and serves jobs from a bounded
queue, batching concurrent completion requests into one KV-cache decode (dynamic batching).

Completion jobs whose sampling settings are equal (the seed aside: each row draws from its own generator
seeded by the request's seed, the prompt's text and the sample's index, exactly as ``lmkit generate``
does) are decoded together, up to ``max_batch`` rows; the worker waits at most ``batch_wait`` seconds for
companions when the queue is empty. Any other job is a call (scoring, classification, fill-mask, answers:
a task's route says what) run on the worker between batches. The HTTP layer never touches the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lmkit.generation.decode import STOP_CONTEXT, STOP_EOS, STOP_LENGTH
from lmkit.generation.sampling import prompt_key, row_generators
from lmkit.generation.settings import SamplingSettings

COMPLETE, CALL = "complete", "call"  # the kinds of job: decoding rows together, or a function of the model
FINISH = {STOP_EOS: "stop", "stop": "stop", STOP_LENGTH: "length", STOP_CONTEXT: "length"}


class QueueFull(Exception):
    """The job queue holds ``max_queue`` jobs: the request is refused (503)."""


@dataclass
class Row:
    """One completion to decode: a prompt's ids and the generator its sample draws from."""

    ids: list[int]
    generator: torch.Generator
    on_text: Callable[[str], None] | None = None
    text: str = ""
    new_ids: list[int] = field(default_factory=list)
    finish: str = "length"


@dataclass
class Job:
    kind: str                                   # COMPLETE (payload: rows) or CALL (payload: a function)
    payload: Any
    settings: SamplingSettings | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False

    def key(self) -> tuple:
        """Jobs with equal keys decode in one batch: their settings, the seed aside."""
        if self.kind != COMPLETE:
            return (self.kind, id(self))
        return (COMPLETE, dataclasses.replace(self.settings, seed=0))

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        self.loop.call_soon_threadsafe(settle)


class Engine:
    """A model behind a job queue and one worker thread. ``decoder`` (a text model's Generator) decodes the
    completion jobs; any kind of model runs call jobs."""

    def __init__(self, decoder: Any = None, *, max_batch: int = 32, batch_wait: float = 0.005, max_queue: int = 256):
        self.decoder = decoder
        self.max_batch, self.batch_wait, self.max_queue = max_batch, batch_wait, max_queue
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue while batching, not of the batch's kind
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="lmkit-serve-engine", daemon=True)
        self.batches: list[int] = []  # rows per decode batch, for the benchmark and tests

    # -- the request side (the event loop) ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    async def submit(self, kind: str, payload: Any, settings: SamplingSettings | None = None,
                     timeout: float | None = None) -> Any:
        """Queue a job (COMPLETE: rows decoded with ``settings``; CALL: a function run on the worker) and wait
        for its result; QueueFull when the queue is full, TimeoutError after ``timeout`` seconds (the job is
        then dropped, or its rows stop at their next token)."""
        if self.pending >= self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        job = Job(kind, payload, settings, loop, loop.create_future())
        self._queue.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            job.cancelled = True
            raise

    # -- what the jobs compute (the worker thread) --------------------------------------------------

    def rows(self, prompts: list[list[int]], texts: list[str], n: int, seed: int,
             on_text: Callable[[int, str], None] | None = None) -> list[Row]:
        """``n`` samples of each prompt; sample k of a prompt draws from (seed, its text, k), as generate's."""
        streams = [(prompt_key(text), k) for text in texts for k in range(n)]
        generators = row_generators(seed, streams)
        ids = [prompt for prompt in prompts for _ in range(n)]
        return [Row(ids[i], generators[i], None if on_text is None else _bind(on_text, i)) for i in range(len(ids))]

    def _decode(self, jobs: list[Job]) -> None:
        rows = [row for job in jobs for row in job.payload]
        settings = jobs[0].settings
        owners = [job for job in jobs for _ in job.payload]
        streaming = [row.on_text for row in rows] if any(row.on_text for row in rows) else None
        answers = self.decoder.generate_encoded([row.ids for row in rows], settings, [row.generator for row in rows],
                                                streaming, cancelled=lambda index: owners[index].cancelled)
        for row, (text, reason, new_ids) in zip(rows, answers):
            row.text, row.finish, row.new_ids = text, FINISH.get(reason, "stop"), new_ids
        self.batches.append(len(rows))
        for job in jobs:
            job.resolve(job.payload)

    def _next(self, timeout: float) -> Job | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self._next(0.05)
            if job is None:
                continue
            if job.cancelled:
                continue
            batch = [job]
            try:
                if job.kind == CALL:
                    job.resolve(job.payload())
                    continue
                rows = len(job.payload)
                deadline = time.monotonic() + self.batch_wait
                while rows < self.max_batch:
                    try:
                        other = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                    except queue.Empty:
                        break
                    if other.key() == job.key() and rows + len(other.payload) <= self.max_batch:
                        batch.append(other)
                        rows += len(other.payload)
                    else:
                        self._held.append(other)
                live = [j for j in batch if not j.cancelled]
                if live:
                    self._decode(live)
            except Exception as exc:  # noqa: BLE001 -- the worker outlives a bad job: its requests get the error
                for each in batch:  # (app.py answers a UserError with a 400, anything else with a logged 500)
                    each.resolve(error=exc)


def _bind(on_text: Callable[[int, str], None], index: int) -> Callable[[str], None]:
    return lambda text: on_text(index, text)
