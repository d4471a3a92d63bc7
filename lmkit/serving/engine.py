"""The model side of ``lmkit serve``: one worker thread owns the model and serves jobs from a bounded queue; the
HTTP layer never touches the model.

Completion jobs are decoded by one of two schedulers. ``continuous`` (scheduler.py; transformers): every request's
rows share one running batch that rows join and leave at each step, whatever their sampling settings.
``dynamic`` (the LSTM's, whose recurrent state has no slots): jobs whose sampling settings are equal (the seed
aside) are decoded together, up to ``max_batch`` rows, the worker waiting at most ``batch_wait`` seconds for
companions, and a batch runs until its longest row ends. Either way each row draws from its own generator, seeded
by the request's seed, the prompt's text and the sample's index, exactly as ``lmkit generate`` does.

Other jobs run on the worker between decoding steps: a call (a function of the model: a task's route says what)
alone, and Batched jobs (classification, fill-mask, answers, log-probabilities) merged with the queued jobs of
their kind into one call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any, Callable

from lmkit.errors import UserError
from lmkit.generation.sampling import prompt_key, row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.serving.jobs import BATCH, CALL, COMPLETE, FINISH, Batched, Job, QueueFull, Row
from lmkit.serving.scheduler import Scheduler

__all__ = ["BATCH", "CALL", "COMPLETE", "SCHEDULERS", "Batched", "Engine", "Job", "QueueFull", "Row", "scheduler_for"]

SCHEDULERS = ("continuous", "dynamic")
IDLE_WAIT = 0.05  # seconds the idle worker waits for a job before looking at its stop flag again


def scheduler_for(requested: str, arch: str) -> str:
    """--scheduler resolved: auto is continuous batching, but for an LSTM, whose recurrent state has no slots."""
    if arch == "lstm":
        if requested == "continuous":
            raise UserError("--scheduler continuous: an LSTM's recurrent state has no per-request slots; use "
                            "--scheduler dynamic (or auto)")
        return "dynamic"
    return "continuous" if requested == "auto" else requested


class Engine:
    """A model behind a job queue and one worker thread. ``decoder`` (a text model's Generator) decodes the
    completion jobs with ``scheduler``; any kind of model runs call and batched jobs. ``warm_up``: run on the
    worker before it takes jobs (``ready`` is True from then on)."""

    def __init__(self, decoder: Any = None, *, max_batch: int = 32, batch_wait: float = 0.005, max_queue: int = 256,
                 scheduler: str = "continuous", prefill_chunk: int = 256, prefix_cache_tokens: int = 4096,
                 warm_up: Callable[[], None] | None = None):
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        self.decoder = decoder
        self.max_batch, self.batch_wait, self.max_queue = max_batch, batch_wait, max_queue
        self.scheduler = (Scheduler(decoder, max_batch, prefill_chunk, prefix_cache_tokens)
                          if decoder is not None and scheduler == "continuous" else None)
        self.ready = False  # the model is warmed and the worker takes jobs
        self._warm_up = warm_up
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []  # dynamic: taken from the queue while batching, not of the batch's kind
        self._calls: list[Job] = []  # continuous: call and batched jobs waiting for the next pause between steps
        self._decoding = 0  # dynamic: rows of the batch decoding now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="lmkit-serve-engine", daemon=True)
        self.batches: list[int] = []  # dynamic: rows per decode batch, for the benchmark and tests

    # -- the request side (the event loop) ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def pending(self) -> int:
        """Jobs waiting: queued, or taken from the queue but not started (no row of theirs in a slot yet)."""
        waiting = self.scheduler.waiting_jobs if self.scheduler is not None else 0
        return self._queue.qsize() + len(self._held) + len(self._calls) + waiting

    @property
    def running(self) -> int:
        """Completion rows in the batch now (reading their prompt or decoding)."""
        return len(self.scheduler.rows) if self.scheduler is not None else self._decoding

    @property
    def slots(self) -> int:
        """Rows the batch holds at most (--max-batch): the KV cache's slots under continuous batching."""
        return self.max_batch

    @property
    def prefix_hits(self) -> int:
        """Prompt tokens whose keys and values came from the prefix cache, since the start."""
        return self.scheduler.prefix.hits if self.scheduler is not None else 0

    @property
    def prefix_lookups(self) -> int:
        """Prompt tokens (of whole blocks) looked for in the prefix cache, since the start."""
        return self.scheduler.prefix.lookups if self.scheduler is not None else 0

    async def submit(self, kind: str, payload: Any, settings: SamplingSettings | None = None,
                     timeout: float | None = None, admitted: bool = False) -> Any:
        """Queue a job (COMPLETE: rows decoded with ``settings``; CALL: a function run on the worker; BATCH: a
        Batched) and wait for its result; QueueFull when the queue is full (unless ``admitted``: the caller checked
        the queue already and can no longer refuse), TimeoutError after ``timeout`` seconds (the job is then
        dropped, or its rows leave the batch at the next step)."""
        if not admitted and self.pending >= self.max_queue:
            raise QueueFull()
        loop = asyncio.get_running_loop()
        job = Job(kind, payload, settings, loop, loop.create_future())
        self._queue.put(job)
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            job.cancelled = True
            raise

    def rows(self, prompts: list[list[int]], texts: list[str], n: int, seed: int,
             on_text: Callable[[int, str], None] | None = None) -> list[Row]:
        """``n`` samples of each prompt; sample k of a prompt draws from (seed, its text, k), as generate's."""
        streams = [(prompt_key(text), k) for text in texts for k in range(n)]
        generators = row_generators(seed, streams)
        ids = [prompt for prompt in prompts for _ in range(n)]
        return [Row(ids[i], generators[i], None if on_text is None else _bind(on_text, i)) for i in range(len(ids))]

    def warm_up(self) -> None:
        """Decode a few small requests of the engine's own, before ``start``: a compiled decoding step (--compile)
        compiles now rather than in a user's request."""
        if self.scheduler is not None:
            self.scheduler.warm_up()
        elif self.decoder is not None:
            self.decoder.warm_up()

    # -- the worker thread ----------------------------------------------------------------------------

    def _work(self) -> None:
        if self._warm_up is not None:
            self._warm_up()
        self.ready = True
        try:
            while not self._stop.is_set():
                if self.decoder is not None and self.scheduler is None:
                    self._dynamic()
                else:
                    self._continuous()
        finally:
            self.ready = False

    def _continuous(self) -> None:
        """One turn: take what was queued, run the oldest call (merged with its kind's queued items), one step
        (a model that does not decode: calls only)."""
        scheduler = self.scheduler
        busy = scheduler is not None and scheduler.busy
        self._take(wait=0.0 if busy or self._calls else IDLE_WAIT)
        if self._calls:
            self._run_call()
        if scheduler is not None and scheduler.busy:
            try:
                scheduler.step()
            except Exception as exc:  # noqa: BLE001 -- the worker outlives a bad step: its requests get the error
                scheduler.fail(exc)

    def _take(self, wait: float) -> None:
        """Move every queued job to the scheduler or the calls, waiting up to ``wait`` seconds for the first."""
        try:
            job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if not job.cancelled:
                if job.kind == COMPLETE and self.scheduler is None:
                    job.resolve(error=RuntimeError("a completion job for an engine without a decoder"))
                elif job.kind == COMPLETE:
                    self.scheduler.add(job)
                else:
                    self._calls.append(job)
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return

    def _run_call(self) -> None:
        """The oldest call job, or the oldest batched job with the queued ones of its key (up to max_batch
        items, at least one job), in one call."""
        first = self._calls.pop(0)
        if first.kind == CALL:
            _settle([first], first.payload)
            return
        jobs, items = [first], len(first.payload.items)
        for other in list(self._calls):
            if items >= self.max_batch:
                break
            if other.kind == BATCH and other.payload.key == first.payload.key:
                self._calls.remove(other)
                jobs.append(other)
                items += len(other.payload.items)
        _run_batched(jobs)

    # -- dynamic batching (--scheduler dynamic, and LSTM models) --------------------------------------

    def _dynamic(self) -> None:
        job = self._next(IDLE_WAIT)
        if job is None or job.cancelled:
            return
        batch = [job]
        try:
            if job.kind == CALL:
                job.resolve(job.payload())
                return
            if job.kind == BATCH:
                _run_batched(batch)
                return
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

    def _next(self, timeout: float) -> Job | None:
        if self._held:
            return self._held.pop(0)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _decode(self, jobs: list[Job]) -> None:
        rows = [row for job in jobs for row in job.payload]
        settings = jobs[0].settings
        owners = [job for job in jobs for _ in job.payload]
        streaming = [row.on_text for row in rows] if any(row.on_text for row in rows) else None
        self._decoding = len(rows)
        try:
            answers = self.decoder.generate_encoded([row.ids for row in rows], settings,
                                                    [row.generator for row in rows], streaming,
                                                    cancelled=lambda index: owners[index].cancelled)
        finally:
            self._decoding = 0
        for row, (text, reason, new_ids) in zip(rows, answers):
            row.text, row.finish, row.new_ids = text, FINISH.get(reason, "stop"), new_ids
        self.batches.append(len(rows))
        for job in jobs:
            job.resolve(job.payload)


def _settle(jobs: list[Job], compute: Callable[[], Any]) -> None:
    """Resolve ``jobs`` with ``compute()``'s result (one job) or its error (every job)."""
    try:
        result = compute()
    except Exception as exc:  # noqa: BLE001 -- the worker outlives a bad job: its requests get the error
        for job in jobs:  # (app.py answers a UserError with a 400, anything else with a logged 500)
            job.resolve(error=exc)
        return
    jobs[0].resolve(result)


def _run_batched(jobs: list[Job]) -> None:
    """Batched jobs of one key: their items in one call, each job given its own results; when the merged call
    fails, each job alone (so that a bad item fails its own request only)."""
    if len(jobs) == 1:
        _settle(jobs, lambda: jobs[0].payload.run(jobs[0].payload.items))
        return
    items = [item for job in jobs for item in job.payload.items]
    try:
        results = jobs[0].payload.run(items)
    except Exception:  # noqa: BLE001 -- one job's item may be the cause: each job alone says whose
        for job in jobs:
            _run_batched([job])
        return
    start = 0
    for job in jobs:
        end = start + len(job.payload.items)
        job.resolve(results[start:end])
        start = end


def _bind(on_text: Callable[[int, str], None], index: int) -> Callable[[str], None]:
    return lambda text: on_text(index, text)

