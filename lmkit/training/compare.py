"""Comparing training runs from the shell (``lmkit runs DIR``): the run directories under a directory, each
summarized from what it already holds (config.toml, metrics.jsonl, final/manifest.json), and the settings in
which they differ. Reads files only: no torch, no checkpoint weights."""

from __future__ import annotations

import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit import artifacts
from lmkit.errors import UserError
from lmkit.plotting import METRICS_FILE, RunMetrics, read_run

FINAL = "final"  # training.rundir.FINAL, spelled here: rundir imports torch, and this module reads files only
# Settings that say how a launch ran, not what it trained: never a difference worth a column.
NOT_COMPARED = ("out", "resume", "auto_resume", "force", "print_config")


@dataclass
class RunSummary:
    """One run directory, summarized."""

    path: Path
    name: str
    config: dict[str, Any]
    metrics: RunMetrics
    finished: bool                               # final/ holds a committed checkpoint
    step: int = 0
    tokens: int = 0
    seconds: float = 0.0                         # training time (the last logged elapsed_s)
    tokens_per_s: float | None = None            # median over the logged steps
    mfu: float | None = None                     # median over the logged steps
    final: dict[str, float] = field(default_factory=dict)  # last loss and last value of each validation metric


def find_runs(root: Path) -> list[Path]:
    """The run directories at or under ``root``: those holding metrics.jsonl (checkpoints inside are skipped)."""
    if not root.is_dir():
        raise UserError(f"{root}: not a directory (give a directory of training runs)")
    found = sorted({p.parent for p in root.rglob(METRICS_FILE) if not any(part.startswith(".") for part in
                                                                         p.relative_to(root).parts)})
    if not found:
        raise UserError(f"{root}: no run directories under it (a run of lmkit pretrain or finetune holds "
                        f"{METRICS_FILE})")
    return found


def summarize(run_dir: Path, root: Path) -> RunSummary:
    metrics = read_run(run_dir)
    config_file = run_dir / "config.toml"
    config = tomllib.loads(config_file.read_text()) if config_file.is_file() else {}
    finished = (run_dir / FINAL / artifacts.MANIFEST).is_file()
    name = str(run_dir.relative_to(root)) if run_dir != root else run_dir.resolve().name
    summary = RunSummary(run_dir, name, config, metrics, finished)
    records = metrics.train + metrics.evals
    if records:
        last = max(records, key=lambda r: r["step"])
        summary.step, summary.tokens = last["step"], int(last.get("tokens", 0))
        summary.seconds = max((r.get("elapsed_s", 0.0) for r in metrics.train), default=0.0)
    if finished:  # the committed figures win over the log's
        stats = artifacts.read_manifest(run_dir / FINAL)["stats"]
        summary.step, summary.tokens = stats.get("step", summary.step), stats.get("tokens", summary.tokens)
    rates = [r["tokens_per_s"] for r in metrics.train[1:] if "tokens_per_s" in r]  # the first holds the start-up
    mfus = [r["mfu"] for r in metrics.train[1:] if "mfu" in r]
    summary.tokens_per_s = statistics.median(rates) if rates else None
    summary.mfu = statistics.median(mfus) if mfus else None
    if metrics.train:
        summary.final["loss"] = metrics.train[-1]["loss"]
    for key in metrics.val_keys:
        values = [r[key] for r in metrics.evals if key in r]
        summary.final[key] = values[-1]
    return summary


def differing_settings(runs: list[RunSummary]) -> list[str]:
    """The settings in which the runs differ: those with two values or more among the runs that have them, and
    those only one run has (--teacher; config.toml leaves out what is unset). A setting of one stage that its runs
    share (finetuning's defaults, under a directory of pretraining and finetuning runs) is no difference."""
    keys = sorted({key for run in runs for key in run.config} - set(NOT_COMPARED))
    differing = []
    for key in keys:
        values = [repr(run.config[key]) for run in runs if key in run.config]
        if len(set(values)) > 1 or len(values) == 1:
            differing.append(key)
    return differing


def compare(root: Path) -> tuple[list[RunSummary], list[str]]:
    """The runs under ``root`` and the settings in which they differ."""
    runs = [summarize(path, root) for path in find_runs(root)]
    return runs, differing_settings(runs) if len(runs) > 1 else []


def metric_names(runs: list[RunSummary]) -> list[str]:
    """The numeric figures any run logged (what --plot accepts)."""
    names = {key for run in runs for record in run.metrics.train + run.metrics.evals for key, value in record.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"}
    return sorted(names)
