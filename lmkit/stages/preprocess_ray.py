"""``lmkit preprocess --executor ray``: the Ray executor (an ``Executor`` of data/executors.py), the preprocess
stage's work as Ray tasks, with the same output as the local executor. It imports nothing from the stage.

1. **Map**, one task per input file: read, clean, filter, identify the language, digest and MinHash band keys
   (data/preprocess_steps.py, as a local worker does). The candidates (documents that passed the filters) go to
   a spill file per input in the artifact's temporary directory, written under a temporary name and renamed when
   complete, so a retried task rewrites it whole and never duplicates a document. The digests and band keys come
   back split into P partitions by key, each a Ray object, with the document's position (input, candidate number).
2. **Dedup**, one task per partition: its (key, position) pairs sorted; every document after the first of a key
   is a duplicate (the rule of data/dedup.py: a digest seen earlier, else a band key shared with any earlier
   document). A task holds 1/P of the keys and returns the positions of the duplicates only.
3. In input order, this process streams each input's candidates with those decisions into the splits' chunk
   files: the same bookkeeping as --executor local (data/survivors.py).
4. **Tokenize and write**, one task per chunk (preprocess_steps.write_chunk, what a local worker runs): shuffle,
   tokenize, write its shard(s); the stage renames them in order. So the dataset is the same, byte for byte.

A failed task is retried by Ray (a lost worker: up to 3 times); an error in the data (a bad record) stops the
run with its one-line message. Nothing is committed until every task has finished. On a cluster, the inputs
and --out must be on a filesystem every node sees, and lmkit installed on every node. Ray itself is imported
only when this executor starts, so it stays an optional dependency.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from lmkit.data import sources
from lmkit.data.executors import ReadJob
from lmkit.data.preprocess_steps import Cleaner, CleanSettings, batches, documents
from lmkit.data.spill import Spill, read_batches
from lmkit.data.survivors import Survivors
from lmkit.errors import UserError
from lmkit.parallel import in_order
from lmkit.progress import reporter

_POSITION_BITS = 32  # a position is (input index << 32) | candidate number within the input
_FAULT_ENV = "LMKIT_RAY_FAULT_DIR"  # tests: the first map task of a run dies once (a lost worker) when set

Item = TypeVar("Item")
Result = TypeVar("Result")


def _ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray: needs Ray; install it with pip install 'lmkit[ray]'") from None
    return ray


def connect(address: str | None, cpus: int) -> bool:
    """Join the Ray cluster at ``address``, or start Ray here with ``cpus`` CPUs (unless this process already
    runs one); True when this call started it (the caller shuts it down)."""
    ray = _ray()
    if address:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UserError(f"--address {address}: expected HOST:PORT of a Ray head node (e.g. 10.0.0.1:6379)")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise UserError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                            "with `ray start --head`, or drop --address to run Ray on this machine") from None
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        with _quiet_logger(_RAY_AUTH_LOGGER):
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        reporter.detail("Ray started on this machine for this run (token authentication on, Ray's default)")
    return True


# Recent Ray (2.60 here) turns token authentication on for a Ray that ray.init() starts, and says so in a warning
# on every start, which `preprocess --executor ray` printed into its output. The Ray lmkit starts is private to one
# run and stopped at its end, so that notice is not the user's business; for a cluster of the user's own
# (--address) what Ray says about its authentication is left alone.
_RAY_AUTH_LOGGER = "ray._private.authentication"


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """The logger ``name`` (and those below it) passes only errors, for the duration of the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cluster_cpus() -> int:
    return max(1, int(_ray().cluster_resources().get("CPU", 1)))


def _get(refs: Any) -> Any:  # Any: Ray's ObjectRef is not importable without Ray
    """ray.get, with a task's own error (a bad record at FILE:LINE) raised as itself."""
    ray = _ray()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, UserError):
            raise cause from None
        raise


# -- 1. map: one input file ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _MapSummary:
    counts: Counter[str]   # the reader's counts (records, input_bytes, ...)
    dropped: Counter[str]  # documents dropped by the reader and the filters, by reason
    candidates: int        # documents spilled: they passed the filters and wait for dedup


@dataclass(frozen=True)
class _KeyPartition:
    """One input's dedup keys that fall in one partition, each with its candidate number."""

    exact: np.ndarray  # (n, 3) uint64: digest's high and low 8 bytes, candidate number
    near: np.ndarray   # (n, 2) uint64: MinHash band key, candidate number


def _map_input(index: int, path: str, role: str, options: sources.ReadOptions, settings: CleanSettings,
               label_required: bool, spill_path: str, partitions: int) -> list[_MapSummary | _KeyPartition]:
    fault_dir = os.environ.get(_FAULT_ENV)
    if fault_dir and index == 0:
        marker = Path(fault_dir) / hashlib.sha256(spill_path.encode()).hexdigest()
        if not marker.exists():
            marker.touch()
            os._exit(1)  # as a worker lost mid-task: Ray retries the task
    cleaner = Cleaner(settings)
    counts: Counter[str] = Counter()
    dropped: Counter[str] = Counter()

    exact: list[list[tuple[int, int, int]]] = [[] for _ in range(partitions)]
    near: list[list[tuple[int, int]]] = [[] for _ in range(partitions)]
    partial = Path(spill_path + ".part")
    spill = Spill(partial)
    number = 0
    for batch in batches(documents(path, role, options, counts, dropped, label_required)):
        for kept in cleaner.clean_batch(batch):
            if isinstance(kept, str):
                dropped[kept] += 1
                continue
            spill.add(kept.row)
            digest = kept.row.digest
            high, low = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:], "big")
            exact[high % partitions].append((high, low, number))
            for key in kept.keys or ():
                near[(key >> 16) % partitions].append((key, number))  # low bits: the band index
            number += 1
    spill.close()
    os.replace(partial, spill_path)
    parts = [_KeyPartition(np.array(exact[p], dtype=np.uint64).reshape(-1, 3),
                           np.array(near[p], dtype=np.uint64).reshape(-1, 2)) for p in range(partitions)]
    return [_MapSummary(counts, dropped, number), *parts]


# -- 2. dedup: one partition of the keys ---------------------------------------------------------------
def _later_of_each_key(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Positions that are not the first of their key (``keys``: rows of one or more key columns)."""
    if len(positions) == 0:
        return positions
    order = np.lexsort((positions, *keys.T[::-1]))
    keys, positions = keys[order], positions[order]
    same = np.all(keys[1:] == keys[:-1], axis=1)
    return positions[1:][same]


def _dedup_partition(*parts: _KeyPartition) -> tuple[np.ndarray, np.ndarray]:
    """(exact duplicates, near duplicates) of one partition: positions, from every input's share of it."""
    exact_keys, exact_positions, near_keys, near_positions = [], [], [], []
    for index, part in enumerate(parts):
        base = np.uint64(index << _POSITION_BITS)
        exact_keys.append(part.exact[:, :2])
        exact_positions.append(part.exact[:, 2] | base)
        near_keys.append(part.near[:, :1])
        near_positions.append(part.near[:, 1] | base)
    return (_later_of_each_key(np.concatenate(exact_keys), np.concatenate(exact_positions)),
            _later_of_each_key(np.concatenate(near_keys), np.concatenate(near_positions)))


# -- chunk tasks: the local ordered_map's contract on Ray ---------------------------------------------
_initialized: dict[tuple[Callable[..., None], tuple], bool] = {}


def _call(fn: Callable[[Item], Result], initializer: Callable[..., None] | None, initargs: tuple,
          item: Item) -> Result:
    if initializer is not None and (initializer, initargs) not in _initialized:  # once per Ray worker
        initializer(*initargs)
        _initialized[(initializer, initargs)] = True
    return fn(item)


# -- the executor ---------------------------------------------------------------------------------------
class RayExecutor:
    """Joins the cluster at ``address`` or starts Ray here with ``cpus`` CPUs when entered; shuts down on exit
    the Ray it started (one already running in this process is left running)."""

    def __init__(self, address: str | None, cpus: int):
        self.address, self.cpus = address, cpus
        self._started = False

    def __enter__(self) -> RayExecutor:
        self._started = connect(self.address, self.cpus)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._started:
            self._started = False
            _ray().shutdown()

    def read_and_dedup(self, job: ReadJob, survivors: Survivors) -> None:
        """Read, clean, filter and deduplicate on Ray; ``survivors`` gets every candidate, in input order."""
        ray = _ray()
        started = time.monotonic()
        partitions = max(2, cluster_cpus())
        map_task = ray.remote(_map_input).options(num_returns=1 + partitions, max_retries=3)
        dedup_task = ray.remote(_dedup_partition).options(num_returns=2, max_retries=3)
        spills = [str(job.spill_dir / f"input-{index:06d}.arrows") for index in range(len(job.inputs))]
        mapped = [map_task.remote(index, path, role, job.options, job.clean, job.label_required, spills[index],
                                  partitions) for index, (path, role) in enumerate(job.inputs)]
        with reporter.task("reading and cleaning (Ray)", total=len(job.inputs), unit="files") as task:
            summaries: list[_MapSummary] = []
            for refs in mapped:
                summaries.append(_get(refs[0]))
                task.advance(1)
        for summary in summaries:
            survivors.counts.update(summary.counts)
            survivors.dropped.update(summary.dropped)
        survivors.phases["ray_map"] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        decided = [dedup_task.remote(*[refs[1 + p] for refs in mapped]) for p in range(partitions)]
        results = _get([ref for pair in decided for ref in pair])
        survivors.phases["ray_dedup"] = round(time.monotonic() - started, 3)
        started = time.monotonic()
        exact = np.unique(np.concatenate([np.zeros(0, np.uint64), *results[0::2]])) if job.exact_dedup else None
        near = np.unique(np.concatenate([np.zeros(0, np.uint64), *results[1::2]])) if job.clean.near_dedup else None
        with reporter.task("deduplicating and splitting", total=sum(s.candidates for s in summaries),
                           unit="docs") as task:
            for index, (_path, role) in enumerate(job.inputs):
                exact_here, near_here = _of_input(exact, index), _of_input(near, index)
                number = 0
                for rows in read_batches(Path(spills[index])):
                    for row in rows:
                        duplicate = ("exact_duplicate" if number in exact_here else
                                     "near_duplicate" if number in near_here else None)
                        survivors.add(row, role, duplicate)
                        number += 1
                    task.advance(len(rows))
                os.remove(spills[index])
        survivors.phases["ray_split"] = round(time.monotonic() - started, 3)

    def ordered_map(self, fn: Callable[[Item], Result], items: Iterable[Item],
                    initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Result]:
        """``fn(item)`` for each item as Ray tasks, yielded in input order, with 2 tasks per CPU in flight."""
        task = _ray().remote(_call).options(max_retries=3)
        yield from in_order((task.remote(fn, initializer, initargs, item) for item in items), 2 * cluster_cpus(),
                            _get)


def _of_input(positions: np.ndarray | None, index: int) -> set[int]:
    """The document numbers within input ``index`` of the global positions (input << _POSITION_BITS | number)."""
    if positions is None:
        return set()
    mask = np.uint64((1 << _POSITION_BITS) - 1)
    return set((positions[(positions >> np.uint64(_POSITION_BITS)) == index] & mask).tolist())
