"""Server-sent events for ``lmkit serve``: a job's pieces relayed to the client as they are produced, the job
cancelled as soon as the client goes away (its rows stop at their next token)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

DONE = "data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> str:
    """One server-sent event carrying ``payload`` as JSON."""
    return f"data: {json.dumps(payload)}\n\n"


@dataclass
class Finished:
    """The job's end: its result, or the exception it raised."""

    result: Any = None
    error: BaseException | None = None


async def relay(start: Callable[[Callable[[Any], None]], Awaitable[Any]]) -> AsyncIterator[Any]:
    """Run ``start(emit)`` as a task and yield each item it emits (from any thread) as it comes, then one
    :class:`Finished`. A consumer that stops early (a client that disconnected) cancels the task."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    done = object()
    task = asyncio.ensure_future(start(lambda item: loop.call_soon_threadsafe(pieces.put_nowait, item)))
    task.add_done_callback(lambda _: pieces.put_nowait(done))
    try:
        while (item := await pieces.get()) is not done:
            yield item
        try:
            yield Finished(task.result())
        except Exception as exc:  # noqa: BLE001 -- the stream has started: the consumer turns it into an event
            yield Finished(error=exc)
    finally:
        task.cancel()
