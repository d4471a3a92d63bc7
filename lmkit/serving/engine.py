"""The model side of ``lmkit serve``: one worker thread owns the model and serves jobs from a bounded
queue, batching concurrent completion requests into one KV-cache decode (dynamic batching).

Jobs whose sampling settings are equal (the seed aside: each row draws from its own generator seeded
by the request's seed, the prompt's text and the sample's index, exactly as ``lmkit generate`` does)
are decoded together, up to ``max_batch`` rows; the worker waits at most ``batch_wait`` seconds for
companions when the queue is empty. Scoring (log-probabilities), classification and fill-mask jobs run
one at a time between batches. The HTTP layer (app.py) never touches the model.
"""

from __future__ import annotations

import asyncio
import math
import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lmkit.errors import UserError
from lmkit.evaluation.scoring import token_logprobs
from lmkit.generation.classify import classify
from lmkit.generation.decode import STOP_CONTEXT, STOP_EOS, STOP_LENGTH, decode
from lmkit.generation.fill_mask import fill_mask
from lmkit.generation.generator import Generator
from lmkit.generation.model import CLASSIFY, FILL_MASK, TEXT, checkpoint_mode, compile_choice, load_model
from lmkit.generation.qa import answer_questions
from lmkit.data.qa_windows import QASettings
from lmkit.generation.sampling import prompt_key, row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.tokenizer import Tokenizer
from lmkit.checkpoint import Checkpoint

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
    kind: str                                   # "complete", "score", "classify", "fill-mask", "qa"
    payload: Any
    settings: SamplingSettings | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False

    def key(self) -> tuple:
        """Jobs with equal keys decode in one batch: their settings, the seed aside."""
        if self.kind != "complete":
            return (self.kind, id(self))
        return ("complete", dataclasses.replace(self.settings, seed=0))

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
    """A checkpoint behind a job queue and one worker thread."""

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu", precision: str = "fp32", *,
                 max_batch: int = 32, batch_wait: float = 0.005, max_queue: int = 256, compile: bool | None = None):
        """``compile``: True, False, or None (auto: a text model is compiled where torch can; a server's job
        has no end, so the compile always pays)."""
        self.checkpoint, self.mode = checkpoint, checkpoint_mode(checkpoint)
        self.tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
        self.max_batch, self.batch_wait, self.max_queue = max_batch, batch_wait, max_queue
        self.compiled = self.mode == TEXT and compile_choice(compile, checkpoint, device, None, math.inf)
        if self.mode == TEXT:
            self.generator = Generator(checkpoint, device, precision, batch_size=max_batch, truncate="error",
                                       compile=self.compiled)
            self.model = self.generator.model
        else:
            self.generator = None
            self.model = load_model(checkpoint, device, precision)
        self.block_size = checkpoint.model_config.block_size
        self._queue: queue.Queue[Job] = queue.Queue()
        self._held: list[Job] = []  # taken from the queue while batching, not of the batch's kind
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="lmkit-serve-engine", daemon=True)
        self.batches: list[int] = []  # rows per decode batch, for the benchmark and tests

    # -- the request side (the event loop) ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def warm_up(self) -> None:
        """Decode small batches of different shapes before the first request (no end-of-text stop, so every
        step runs): a compiled model then does its compiles, and the recompiles that make the batch, the cache
        length and the padding symbolic, now rather than in a user's request."""
        settings = SamplingSettings(max_new_tokens=3, temperature=0)
        start, longest = self.generator.start, self.block_size - 1
        for lengths in ((2,), (2, 2), (3, 2)):  # one row; rows without padding; left-padded rows
            prompts = [[start] * min(length, longest) for length in lengths]
            decode(self.generator.model, prompts, settings, row_generators(0, [(0, i) for i in range(len(prompts))]),
                   eos_id=None, banned=(), encode_step=self.generator.encode_step)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._held)

    async def submit(self, kind: str, payload: Any, settings: SamplingSettings | None = None,
                     timeout: float | None = None) -> Any:
        """Queue a job and wait for its result; QueueFull when the queue is full, TimeoutError after
        ``timeout`` seconds (the job is then dropped, or its rows stop at their next token)."""
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

    def encode(self, prompt: str, name: str) -> list[int]:
        """A prompt's model input (an SFT model's template applied); refuses one longer than the context."""
        return self.generator.encode_prompt(prompt, name)

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
        answers = self.generator.generate_encoded([row.ids for row in rows], settings, [row.generator for row in rows],
                                                  streaming, cancelled=lambda index: owners[index].cancelled)
        for row, (text, reason, new_ids) in zip(rows, answers):
            row.text, row.finish, row.new_ids = text, FINISH.get(reason, "stop"), new_ids
        self.batches.append(len(rows))
        for job in jobs:
            job.resolve(job.payload)

    @torch.no_grad()
    def score(self, ids: list[int], top: int) -> tuple[list[float], list[dict[int, float]]]:
        """Log-probability of each of ``ids`` given ``</s>`` and the ids before it, and the ``top`` most
        likely ids at each position (an empty dict when ``top`` is 0)."""
        if len(ids) > self.block_size:
            raise UserError(f"prompt: {len(ids)} tokens with the completion, more than the model's context "
                            f"({self.block_size - 1} tokens)")
        idx = torch.tensor([[self.generator.start, *ids[:-1]]], device=self.model.tok_emb.weight.device)
        logits, _ = self.model(idx)
        logits = logits[0].float()  # (T, V)
        logprobs, _ = token_logprobs(logits, torch.tensor(ids, device=logits.device))
        tops: list[dict[int, float]] = [{} for _ in ids]
        if top:
            best = torch.log_softmax(logits.double(), dim=-1).topk(top, dim=-1)
            tops = [dict(zip(i.tolist(), v.tolist())) for v, i in zip(best.values, best.indices)]
        return logprobs.tolist(), tops

    def _run_one(self, job: Job) -> None:
        if job.kind == "score":
            job.resolve([self.score(ids, top) for ids, top in job.payload])
        elif job.kind == "classify":
            texts, pairs = job.payload
            job.resolve(classify(self.model, self.tokenizer, self.checkpoint.labels, texts,
                                 batch_size=self.max_batch, head=self.checkpoint.head, pairs=pairs))
        elif job.kind == "qa":
            questions, contexts = job.payload
            job.resolve(answer_questions(self.model, self.tokenizer, QASettings.from_head(self.checkpoint.qa),
                                         questions, contexts, batch_size=self.max_batch))
        elif job.kind == "fill-mask":
            texts, top_k = job.payload
            job.resolve(fill_mask(self.model, self.tokenizer, texts, top_k=top_k, batch_size=self.max_batch))
        else:
            raise ValueError(f"unknown job kind {job.kind!r}")  # a bug in app.py

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
                if job.kind != "complete":
                    self._run_one(job)
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
