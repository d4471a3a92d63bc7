"""Progress and messages: live rich bars on a terminal, plain log lines elsewhere (CI, pipes).

Messages and progress go to stderr; results (tables, "up to date") go to stdout, so
``lmkit ... > result.txt`` captures only results. Colour follows rich's rules: off when
``NO_COLOR`` is set or the stream is not a terminal.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.text import Text


def _format_count(value: float, unit: str) -> str:
    if unit == "B":
        for suffix in ("B", "KB", "MB", "GB", "TB"):
            if abs(value) < 1000 or suffix == "TB":
                return f"{value:.1f} {suffix}" if suffix != "B" else f"{int(value)} B"
            value /= 1000
    return f"{int(value):,} {unit}"


def _format_rate(rate: float, unit: str) -> str:
    """A rate as a reader takes it in: bytes per second scaled; a count per second, or below one a second the
    seconds each takes ("1.4 s/step"), so a slow run never reads "0 steps/s"."""
    if unit == "B":
        return f"{_format_count(rate, unit)}/s"
    if 0 < rate < 1:
        return f"{1 / rate:,.1f} s/{unit.removesuffix('s')}"
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.1f} {unit}/s"


class Task:
    """One progress counter; ``advance`` is cheap enough to call per batch.

    ``initial`` is work done before this process started (a resumed run's steps): it counts towards
    the total but not towards the rate, so the ETA is not fooled by it. ``deadline`` (a
    ``time.monotonic()`` value) bounds the ETA when the work stops at a time rather than a count.
    """

    def __init__(self, reporter: "Reporter", description: str, total: float | None, unit: str,
                 initial: float = 0.0, deadline: float | None = None):
        self.reporter, self.description, self.total, self.unit = reporter, description, total, unit
        self.initial = self.completed = float(initial)
        self.deadline = deadline
        self.status = ""  # e.g. "loss 3.21 lr 3.0e-04": shown after the counts
        self.started = time.monotonic()
        self._last_line = self.started
        self._rich_id = None

    def advance(self, amount: float = 1) -> None:
        self.completed += amount
        if self._rich_id is not None:
            self.reporter._live.update(self._rich_id, completed=self.completed)
        elif self.reporter.plain_progress:
            now = time.monotonic()
            if now - self._last_line >= self.reporter.interval:
                self._last_line = now
                self.reporter.info(self.line())

    def set_status(self, status: str) -> None:
        self.status = status
        if self._rich_id is not None:
            self.reporter._live.update(self._rich_id, description=f"{self.description} {status}")

    def rate(self) -> float:
        """Units per second done by this process (work done before it, ``initial``, excluded)."""
        return (self.completed - self.initial) / max(time.monotonic() - self.started, 1e-9)

    def remaining(self) -> float | None:
        """Seconds left: by the rate towards the total, or until the deadline, whichever comes first."""
        estimates = []
        rate = self.rate()
        if self.total and rate > 0:
            estimates.append(max(self.total - self.completed, 0) / rate)
        if self.deadline is not None:
            estimates.append(max(self.deadline - time.monotonic(), 0.0))
        return min(estimates) if estimates else None

    def line(self) -> str:
        text = f"{self.description}: {_format_count(self.completed, self.unit)}"
        if self.total:
            text += f" / {_format_count(self.total, self.unit)} ({100 * self.completed / self.total:.0f}%)"
        text += f", {_format_rate(self.rate(), self.unit)}"
        remaining = self.remaining()
        if remaining is not None:
            text += f", ETA {_clock(remaining)}"
        return f"{text}  {self.status}" if self.status else text


def _clock(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class _RateColumn(ProgressColumn):
    """An lmkit Task's rate, seconds per unit when below one a second (rich's own would read 0 it/s)."""

    def render(self, task) -> Text:
        lmkit_task = task.fields["lmkit_task"]
        return Text(_format_rate(lmkit_task.rate(), lmkit_task.unit), style="progress.data.speed")


class _RemainingColumn(ProgressColumn):
    """The ETA of an lmkit Task (rich's own column would count a resumed run's earlier steps as done
    in no time, and knows no deadline)."""

    def render(self, task) -> Text:
        remaining = task.fields["lmkit_task"].remaining()
        return Text(f"ETA {_clock(remaining)}" if remaining is not None else "ETA -:--:--", style="progress.remaining")


def _interval(text: str, err: Console) -> float:
    """Seconds between plain progress lines; a bad value is reported and replaced, never fatal."""
    try:
        seconds = float(text)
        if seconds >= 0:
            return seconds
    except ValueError:
        pass
    err.print(f"warning: LMKIT_PROGRESS_INTERVAL={text!r} is not a number of seconds; using 10",
              markup=False, soft_wrap=True)
    return 10.0


class Reporter:
    """Where stages send human-facing output. Configured once by the CLI."""

    def __init__(self, quiet: bool = False, verbose: bool = False):
        self.configure(quiet=quiet, verbose=verbose)

    def configure(self, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet, self.verbose = quiet, verbose
        self.err = Console(stderr=True, highlight=False)
        self.out = Console(highlight=False)
        if not self.out.is_terminal:  # pipes and CI logs: do not wrap tables at 80 columns
            self.out = Console(highlight=False, width=max(120, self.out.width))
        self.interval = _interval(os.environ.get("LMKIT_PROGRESS_INTERVAL", "10"), self.err)
        self._live: Progress | None = None

    def silence(self) -> None:
        """Print nothing, results included (ranks other than 0 of a distributed run)."""
        self.quiet = True
        self.out = Console(file=open(os.devnull, "w"), highlight=False)  # noqa: SIM115 (lives as long as we do)

    @property
    def interactive(self) -> bool:
        return self.err.is_terminal and not self.quiet

    @property
    def plain_progress(self) -> bool:
        return not self.quiet and not self.err.is_terminal

    def write(self, text: str) -> None:
        """Raw text to stdout at once (no rich markup, emoji codes or wrapping): a completion as it streams."""
        self.out.file.write(text)
        self.out.file.flush()

    def info(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False, soft_wrap=True)

    def detail(self, message: str) -> None:
        if self.verbose and not self.quiet:
            self.err.print(message, markup=False, style="dim", soft_wrap=True)

    def warn(self, message: str) -> None:
        self.err.print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)

    @contextmanager
    def task(self, description: str, total: float | None = None, unit: str = "docs", initial: float = 0.0,
             deadline: float | None = None) -> Iterator[Task]:
        task = Task(self, description, total, unit, initial, deadline)
        if self.interactive:
            columns = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()]
            counts = [DownloadColumn(), TransferSpeedColumn()] if unit == "B" else [MofNCompleteColumn(), _RateColumn()]
            columns += counts
            columns += [TimeElapsedColumn(), _RemainingColumn()]
            with Progress(*columns, console=self.err, transient=True) as live:
                self._live = live
                task._rich_id = live.add_task(description, total=total, completed=initial, lmkit_task=task)
                try:
                    yield task
                finally:
                    self._live = None
        else:
            yield task
        if not self.quiet:
            elapsed = time.monotonic() - task.started
            self.detail(f"{task.line()} (done in {elapsed:.1f} s)")


reporter = Reporter()
