"""``lmkit preprocess --executor ray``: the preprocess stage's work as Ray tasks, with the same output.

1. **Map**, one task per input file: read, clean, filter, identify the language, digest and MinHash band keys
   (the local workers' functions). The candidates (documents that passed the filters) go to a spill file per
   input in the artifact's temporary directory, written under a temporary name and renamed when complete, so a
   retried task rewrites it whole and never duplicates a document. The digests and band keys come back split
   into P partitions by key, each a Ray object, with the document's position (input, candidate number).
2. **Dedup**, one task per partition: its (key, position) pairs sorted; every document after the first of a key
   is a duplicate (the rule of data/dedup.py: a digest seen earlier, else a band key shared with any earlier
   document). A task holds 1/P of the keys and returns the positions of the duplicates only.
3. In input order, this process streams each input's candidates with those decisions into the splits' chunk
   files, the same bookkeeping as --executor local, and trains the tokenizer on a sample of them.
4. **Tokenize and write**, one task per chunk (preprocess._write_chunk, what a local worker runs): shuffle,
   tokenize, write its shard(s); this process renames them in order. So the dataset is the same, byte for byte.

A failed task is retried by Ray (a lost worker: up to 3 times); an error in the data (a bad record) stops the
run with its one-line message. Nothing is committed until every task has finished. On a cluster, the inputs
and --out must be on a filesystem every node sees, and lmkit installed on every node.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from lmkit.data import sources
from lmkit.data.spill import Spill
from lmkit.errors import UserError
from lmkit.parallel import in_order
from lmkit.progress import reporter

_POSITION_BITS = 32  # a position is (input index << 32) | candidate number within the input
_FAULT_ENV = "LMKIT_RAY_FAULT_DIR"  # tests: the first map task of a run dies once (a lost worker) when set


def _ray():
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
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


@contextlib.contextmanager
def running(address: str | None, cpus: int) -> Iterator[None]:
    """Ray joined or started for the stage (``connect``), and shut down after it if this started it."""
    started = connect(address, cpus)
    try:
        yield
    finally:
        if started:
            _ray().shutdown()


def cluster_cpus() -> int:
    return max(1, int(_ray().cluster_resources().get("CPU", 1)))


def _get(refs: Any) -> Any:
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
def _map_input(index: int, path: str, role: str, options: sources.ReadOptions, settings: Any, label_required: bool,
               spill_path: str, partitions: int) -> list:
    from lmkit.stages import preprocess as stage

    fault_dir = os.environ.get(_FAULT_ENV)
    if fault_dir and index == 0:
        marker = Path(fault_dir) / hashlib.sha256(spill_path.encode()).hexdigest()
        if not marker.exists():
            marker.touch()
            os._exit(1)  # as a worker lost mid-task: Ray retries the task
    stage._init_clean(settings)
    counts: Counter = Counter()
    dropped: Counter = Counter()

    exact: list[list[tuple[int, int, int]]] = [[] for _ in range(partitions)]
    near: list[list[tuple[int, int]]] = [[] for _ in range(partitions)]
    partial = Path(spill_path + ".part")
    spill = Spill(partial)
    number = 0
    for batch in stage._batches(stage._documents(path, role, options, counts, dropped, label_required)):
        for kept in stage._clean_batch(batch):
            if isinstance(kept, str):
                dropped[kept] += 1
                continue
            spill.add(kept.text, kept.label, kept.digest, kept.lang, kept.pair)
            high, low = int.from_bytes(kept.digest[:8], "big"), int.from_bytes(kept.digest[8:], "big")
            exact[high % partitions].append((high, low, number))
            for key in kept.keys or ():
                near[(key >> 16) % partitions].append((key, number))  # low bits: the band index
            number += 1
    spill.close()
    os.replace(partial, spill_path)
    parts = [{"exact": np.array(exact[p], dtype=np.uint64).reshape(-1, 3),
              "near": np.array(near[p], dtype=np.uint64).reshape(-1, 2)} for p in range(partitions)]
    return [{"counts": counts, "dropped": dropped, "candidates": number}, *parts]


# -- 2. dedup: one partition of the keys ---------------------------------------------------------------
def _later_of_each_key(keys: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Positions that are not the first of their key (``keys``: rows of one or more key columns)."""
    if len(positions) == 0:
        return positions
    order = np.lexsort((positions, *keys.T[::-1]))
    keys, positions = keys[order], positions[order]
    same = np.all(keys[1:] == keys[:-1], axis=1)
    return positions[1:][same]


def _dedup_partition(*parts: dict) -> tuple[np.ndarray, np.ndarray]:
    """(exact duplicates, near duplicates) of one partition: positions, from every input's share of it."""
    exact_keys, exact_positions, near_keys, near_positions = [], [], [], []
    for index, part in enumerate(parts):
        base = np.uint64(index << _POSITION_BITS)
        exact_keys.append(part["exact"][:, :2])
        exact_positions.append(part["exact"][:, 2] | base)
        near_keys.append(part["near"][:, :1])
        near_positions.append(part["near"][:, 1] | base)
    return (_later_of_each_key(np.concatenate(exact_keys), np.concatenate(exact_positions)),
            _later_of_each_key(np.concatenate(near_keys), np.concatenate(near_positions)))


# -- the stage's pass one -----------------------------------------------------------------------------
def pass_one(config: Any, all_inputs: list[tuple[str, str]], options: sources.ReadOptions, settings: Any,
             spill_dir: Path, survivors: Any) -> None:
    """Read, clean, filter and deduplicate on Ray; ``survivors`` gets every candidate, in input order."""
    ray = _ray()
    started = time.monotonic()
    partitions = max(2, cluster_cpus())
    map_task = ray.remote(_map_input).options(num_returns=1 + partitions, max_retries=3)
    dedup_task = ray.remote(_dedup_partition).options(num_returns=2, max_retries=3)
    spills = [str(spill_dir / f"input-{index:06d}.arrows") for index in range(len(all_inputs))]
    mapped = [map_task.remote(index, path, role, options, settings, bool(config.label_field), spills[index],
                              partitions) for index, (path, role) in enumerate(all_inputs)]
    with reporter.task("reading and cleaning (Ray)", total=len(all_inputs), unit="files") as task:
        summaries = []
        for refs in mapped:
            summaries.append(_get(refs[0]))
            task.advance(1)
    for summary in summaries:
        survivors.counts.update(summary["counts"])
        survivors.dropped.update(summary["dropped"])
    survivors.phases["ray_map"] = round(time.monotonic() - started, 3)
    started = time.monotonic()
    decided = [dedup_task.remote(*[refs[1 + p] for refs in mapped]) for p in range(partitions)]
    results = _get([ref for pair in decided for ref in pair])
    survivors.phases["ray_dedup"] = round(time.monotonic() - started, 3)
    started = time.monotonic()
    exact = np.unique(np.concatenate([np.zeros(0, np.uint64), *results[0::2]])) if config.dedup else None
    near = np.unique(np.concatenate([np.zeros(0, np.uint64), *results[1::2]])) if config.near_dedup else None
    mask = np.uint64((1 << _POSITION_BITS) - 1)
    with reporter.task("deduplicating and splitting", total=sum(s["candidates"] for s in summaries),
                       unit="docs") as task:
        for index, (path, role) in enumerate(all_inputs):
            def of_input(positions: np.ndarray | None) -> set[int]:
                if positions is None:
                    return set()
                return set((positions[(positions >> np.uint64(_POSITION_BITS)) == index] & mask).tolist())

            exact_here, near_here = of_input(exact), of_input(near)
            number = 0
            with pa.OSFile(spills[index], "rb") as source:
                for batch in pa.ipc.open_stream(source):
                    for text, label, digest, lang, pair in zip(*(batch.column(name).to_pylist()
                                                                 for name in Spill.SCHEMA.names)):
                        duplicate = ("exact_duplicate" if number in exact_here else
                                     "near_duplicate" if number in near_here else None)
                        survivors.add(text, label, role, digest, lang, duplicate, pair)
                        number += 1
                    task.advance(batch.num_rows)
            os.remove(spills[index])
    survivors.phases["ray_split"] = round(time.monotonic() - started, 3)


# -- chunk tasks: the local ordered_map's contract on Ray ---------------------------------------------
_initialized: dict[Any, bool] = {}


def _call(fn: Callable, initializer: Callable | None, initargs: tuple, item: Any) -> Any:
    if initializer is not None and (initializer, initargs) not in _initialized:  # once per Ray worker
        initializer(*initargs)
        _initialized[(initializer, initargs)] = True
    return fn(item)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, initializer: Callable | None = None,
                initargs: tuple = ()) -> Iterator[Any]:
    """``fn(item)`` for each item as Ray tasks, yielded in input order, with 2 tasks per CPU in flight."""
    task = _ray().remote(_call).options(max_retries=3)
    yield from in_order((task.remote(fn, initializer, initargs, item) for item in items), 2 * cluster_cpus(), _get)
