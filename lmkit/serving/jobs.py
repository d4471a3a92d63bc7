"""What the HTTP side hands the engine's worker: a job (completion rows to decode, a function of the model, or
items a function reads together with other requests' items) and the future its request awaits."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

from lmkit.generation.decode import STOP_CONTEXT, STOP_EOS, STOP_LENGTH, STOP_STRING
from lmkit.generation.settings import SamplingSettings

# The kinds of job: completion rows (decoded with other requests' rows), a function of the model run alone, and a
# Batched job (its items read in one call with those of the other queued jobs of its key).
COMPLETE, CALL, BATCH = "complete", "call", "batch"
FINISH = {STOP_EOS: "stop", STOP_STRING: "stop", STOP_LENGTH: "length", STOP_CONTEXT: "length"}


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
class Batched:
    """Items that ``run`` reads in one call (one result per item, in order), with the items of other queued
    jobs of the same ``key`` when there are: e.g. texts to classify. ``run`` must give an item the same result
    whatever items it is read with (up to rounding); when a merged call fails, each job runs alone, so that an
    error reaches the request that caused it only."""

    key: Hashable
    items: list[Any]
    run: Callable[[list[Any]], list[Any]]


@dataclass
class Job:
    kind: str                                   # COMPLETE (payload: rows), CALL (a function) or BATCH (a Batched)
    payload: Any
    settings: SamplingSettings | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    cancelled: bool = False
    unfinished: int = 0                         # COMPLETE under continuous batching: rows not finished yet

    def key(self) -> tuple:
        """Jobs with equal keys decode in one batch under dynamic batching: their settings, the seed aside."""
        if self.kind != COMPLETE:
            return (self.kind, id(self))
        return (COMPLETE, dataclasses.replace(self.settings, seed=0))

    def resolve(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.loop is None:  # a job of the engine's own (a warm-up): no request awaits it
            return

        def settle() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)
        self.loop.call_soon_threadsafe(settle)
