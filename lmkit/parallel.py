"""Ordered parallel map over worker processes, with bounded work in flight.

``multiprocessing.Pool.imap`` reads its whole input ahead of the workers, which for a corpus
means the whole corpus in memory; this keeps at most ``max_in_flight`` items outstanding.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from typing import Any, Callable, Iterable, Iterator


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _worker_init(initializer: Callable | None, initargs: tuple) -> None:
    # The parent handles Ctrl-C and stops the pool; workers must not die half-way on their own,
    # but must die at once when the pool terminates them (SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked while the pool forked us
    if initializer is not None:
        initializer(*initargs)


def in_order(submitted: Iterable[Any], limit: int, result: Callable[[Any], Any]) -> Iterator[Any]:
    """``result(handle)`` of each submitted piece of work, in submission order, with at most ``limit`` submitted
    and not yet collected (``submitted`` is consumed lazily): a local pool's and Ray's bounded in-order map."""
    pending: deque = deque()
    for handle in submitted:
        pending.append(handle)
        if len(pending) >= limit:
            yield result(pending.popleft())
    while pending:
        yield result(pending.popleft())


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int,
                initializer: Callable | None = None, initargs: tuple = (),
                max_in_flight: int | None = None) -> Iterator[Any]:
    """Yield ``fn(item)`` for each item, in input order. ``workers <= 1`` runs in this process."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    context = multiprocessing.get_context(method)
    limit = max_in_flight or 2 * workers
    # A signal arriving while the pool forks would leave workers nobody terminates (and that
    # hold our stdout open): hold SIGINT/SIGTERM until the pool exists and cleanup is armed.
    blocking = hasattr(signal, "pthread_sigmask")
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if blocking else None
    try:
        pool = context.Pool(workers, _worker_init, (initializer, initargs))
    except BaseException:
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        raise
    try:
        if blocking:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # a pending signal raises here
        yield from in_order((pool.apply_async(fn, (item,)) for item in items), limit, lambda handle: handle.get())
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
