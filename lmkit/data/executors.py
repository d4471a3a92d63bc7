"""Where the preprocess stage's work runs: the ``Executor`` interface, chosen once from ``--executor``, and the
local executor (worker processes on this machine). The Ray executor sits beside the stage (preprocess_ray.py)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

from lmkit.data import sources
from lmkit.data.dedup import ExactDeduper, NearDeduper
from lmkit.data.preprocess_steps import (
    CleanSettings,
    SourceDocument,
    SourceInput,
    batches,
    clean_batch,
    documents,
    init_clean,
)
from lmkit.data.spill import HashingReader
from lmkit.data.survivors import Survivors
from lmkit.parallel import ordered_map
from lmkit.progress import reporter

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass(frozen=True)
class ReadJob:
    """Pass one's work: read → clean → filter → exact and near dedup, for every input in order."""

    inputs: list[SourceInput]
    options: sources.ReadOptions
    clean: CleanSettings         # also says whether near dedup is on, and its threshold
    exact_dedup: bool
    label_required: bool         # --label-field: a document without a label is dropped
    spill_dir: Path              # scratch space in the artifact's temporary directory
    total_bytes: int | None      # of the input files, for progress; None when unknown (stdin)
    stdin: HashingReader | None = None


class Executor(Protocol):
    """Runs the stage's two passes; both executors write the same bytes. Entered once around the whole
    stage (``with executor:``), so that starting it fails before anything is written."""

    def __enter__(self) -> Executor: ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None: ...

    def read_and_dedup(self, job: ReadJob, survivors: Survivors) -> None:
        """Pass one: every document that passes the filters goes to ``survivors.add``, in input order, marked
        as a duplicate or not by the rule of data/dedup.py (the first of a cluster survives)."""
        ...

    def ordered_map(self, fn: Callable[[Item], Result], items: Iterable[Item],
                    initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Result]:
        """``fn(item)`` for each item, in input order, ``initializer(*initargs)`` run once per worker first."""
        ...


class LocalExecutor:
    """Worker processes on this machine (``--workers``); the main process dedups in input order."""

    def __init__(self, workers: int):
        self.workers = workers

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        return None

    def read_and_dedup(self, job: ReadJob, survivors: Survivors) -> None:
        exact = ExactDeduper() if job.exact_dedup else None
        near = NearDeduper(job.clean.near_threshold) if job.clean.near_dedup else None
        counts: Counter = survivors.counts

        def source_documents() -> Iterator[SourceDocument]:
            for path, role in job.inputs:
                yield from documents(path, role, job.options, counts, survivors.dropped, job.label_required,
                                     job.stdin)

        with reporter.task("reading and cleaning", total=job.total_bytes, unit="B") as task:
            seen_bytes = 0
            for results in self.ordered_map(clean_batch, batches(source_documents()), init_clean, (job.clean,)):
                task.advance(counts["input_bytes"] - seen_bytes)
                seen_bytes = counts["input_bytes"]
                for kept in results:
                    if isinstance(kept, str):
                        survivors.dropped[kept] += 1
                        continue
                    duplicate = ("exact_duplicate" if exact is not None and exact.is_duplicate(kept.row.digest) else
                                 "near_duplicate" if near is not None and near.is_duplicate(kept.keys) else None)
                    survivors.add(kept.row, kept.role, duplicate)

    def ordered_map(self, fn: Callable[[Item], Result], items: Iterable[Item],
                    initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Iterator[Result]:
        return ordered_map(fn, items, self.workers, initializer=initializer, initargs=initargs)
