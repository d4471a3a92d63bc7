"""Training curves as PNG (``lmkit plot``), and the figure helpers other pictures share (attention maps).

A run directory's ``metrics.jsonl`` has training lines (step, tokens, loss, lr, grad_norm, tokens_per_s)
and evaluation lines (step, tokens, val_* metrics). matplotlib is an optional extra, imported on first
use; figures are drawn on matplotlib's Agg canvas without pyplot (no global state, no display) and
written atomically, so a reader never sees half a PNG.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmkit.errors import UserError
from lmkit.progress import reporter

EXTRA = "pip install 'lmkit[plot]'"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "plots.png"  # what `lmkit plot RUN` and the end of a training run write into the run directory
DPI = 100


def require_matplotlib(command: str) -> Any:
    """matplotlib's Figure class; a missing extra is a UserError naming it."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError(f"{command} needs matplotlib: {EXTRA}") from None
    return Figure


def save_figure(figure: Any, path: Path) -> Path:
    """Write ``figure`` as PNG to ``path`` through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        figure.savefig(partial, format="png", dpi=DPI)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# -- reading runs -----------------------------------------------------------------------------------

@dataclass
class RunMetrics:
    """One run's metrics.jsonl, split into training and evaluation records (each in step order)."""

    name: str
    path: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    @property
    def val_keys(self) -> list[str]:
        return sorted({key for record in self.evals for key in record if key.startswith("val_")})


def read_run(run_dir: str | Path) -> RunMetrics:
    path = Path(run_dir)
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        hint = ""
        if (path.parent / METRICS_FILE).is_file():  # e.g. runs/gpt/final: the run is its parent
            hint = f"; the run directory is {path.parent}"
        raise UserError(f"{path}: no {METRICS_FILE} (a run directory of lmkit pretrain or finetune holds one){hint}")
    run = RunMetrics(name=path.resolve().name, path=path)
    skipped = 0
    for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # e.g. the last line of a run killed while writing it
            skipped += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            skipped += 1
            continue
        if _number(record.get("loss")) is not None:
            run.train.append(record)
        if any(key.startswith("val_") for key in record):
            run.evals.append(record)
    if skipped:
        reporter.warn(f"{metrics}: skipped {skipped} unreadable line(s)")
    run.train.sort(key=lambda record: record["step"])
    run.evals.sort(key=lambda record: record["step"])
    return run


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [(_number(r.get(x)), _number(r.get(y))) for r in records]
    kept = [(a, b) for a, b in points if a is not None and b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


# -- the figure ---------------------------------------------------------------------------------------

def plot_runs(run_dirs: list[str | Path], out: str | Path) -> Path:
    """One PNG of the runs' curves, overlaid (one colour per run): training loss against steps and
    against tokens, learning rate against steps, and one panel per validation metric against steps."""
    require_matplotlib("lmkit plot")  # before reading anything
    runs = [read_run(run_dir) for run_dir in run_dirs]
    empty = [str(run.path) for run in runs if not run.train and not run.evals]
    if empty:
        raise UserError(f"{', '.join(empty)}: no metrics logged yet in {METRICS_FILE}")
    return save_figure(training_figure(runs), Path(out))


def plot_run_end(run_dir: str | Path) -> Path | None:
    """RUN/plots.png at the end of a training run; None (and a detail line) when matplotlib is not
    installed or nothing was logged: a missing picture must not fail the run."""
    try:
        require_matplotlib("plotting")
    except UserError:
        reporter.detail(f"no training plot: matplotlib is not installed ({EXTRA})")
        return None
    run = read_run(run_dir)
    if not run.train and not run.evals:
        return None
    path = save_figure(training_figure([run]), Path(run_dir) / PLOT_FILE)
    reporter.detail(f"training curves: {path}")
    return path


def plot_range_test(result: Any, path: Path) -> Path | None:
    """The learning-rate range test's curve (``finetune --find-lr``) with the suggested rate; None (and a
    detail line) when matplotlib is not installed: the figures are printed anyway."""
    try:
        figure_class = require_matplotlib("plotting")
    except UserError:
        reporter.detail(f"no lr-find.png: matplotlib is not installed ({EXTRA})")
        return None
    figure = figure_class(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(result.lrs, result.losses)
    axes.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"suggested {result.suggestion:.1e}")
    axes.set(xscale="log", xlabel="learning rate", ylabel="training loss (smoothed)", title="learning-rate range test")
    axes.legend()
    figure.tight_layout()
    return save_figure(figure, path)


def _display_names(runs: list[RunMetrics]) -> list[str]:
    """Legends name runs by directory; two runs with the same name are told apart by their paths."""
    names = [run.name for run in runs]
    return [str(run.path) if names.count(run.name) > 1 else run.name for run in runs]


def training_figure(runs: list[RunMetrics]) -> Any:
    """The matplotlib Figure of ``plot_runs``: panels in two columns, one line per run and metric."""
    Figure = require_matplotlib("lmkit plot")
    from matplotlib.ticker import EngFormatter

    val_keys = sorted({key for run in runs for key in run.val_keys}, key=lambda k: (k != "val_loss", k))
    panels = [("training loss", "step", "loss"), ("training loss", "tokens", "loss"),
              ("learning rate", "step", "lr")] + [(f"validation {key[4:]}", "step", key) for key in val_keys]
    columns = 2
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(12, 3.4 * rows + 0.6), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    colours = [f"C{index % 10}" for index in range(len(runs))]
    names = _display_names(runs)
    for ax, (title, x, y) in zip(axes, panels):
        drew = False
        for run, name, colour in zip(runs, names, colours):
            records = run.evals if y.startswith("val_") else run.train
            xs, ys = _series(records, x, y)
            if xs:
                # Evaluations are few: mark each. So is a short run's every logged step (one is a dot).
                style = "o-" if y.startswith("val_") or len(xs) <= 50 else "-"
                ax.plot(xs, ys, style, color=colour, label=name, linewidth=1.4, markersize=3)
                drew = True
            if (x, y) == ("tokens", "loss"):  # validation loss beside the training loss, same colour
                vx, vy = _series(run.evals, "tokens", "val_loss")
                if vx:
                    ax.plot(vx, vy, "o--", color=colour, label=f"{name} (validation)", linewidth=1.2,
                            markersize=3)
                    drew = True
        ax.set_title(f"{title} vs {'tokens' if x == 'tokens' else 'step'}", fontsize=10)
        ax.set_xlabel("tokens" if x == "tokens" else "optimizer step")
        ax.grid(True, alpha=0.3)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter())
        if y == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        if drew:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    figure.suptitle("training curves: " + ", ".join(names), fontsize=11)
    return figure


def plot_metrics(runs: list[RunMetrics], metrics: list[str], out: str | Path, x: str = "step",
                 names: list[str] | None = None) -> Path:
    """One chart per metric in ``metrics`` (``lmkit runs --plot``), every run a line on it, against ``x``
    (step or tokens); ``names`` label the runs (default: their directories)."""
    Figure = require_matplotlib("lmkit runs --plot")
    figure = Figure(figsize=(8, 4.2 * len(metrics) + 0.4), layout="constrained")
    axes = figure.subplots(len(metrics), 1, squeeze=False).flatten()
    names = names or _display_names(runs)
    for ax, metric in zip(axes, metrics, strict=True):
        for index, (run, name) in enumerate(zip(runs, names, strict=True)):
            records = sorted((r for r in run.train + run.evals if metric in r), key=lambda r: r["step"])
            xs, ys = _series(records, x, metric)
            if xs:
                ax.plot(xs, ys, "o-" if len(xs) <= 50 else "-", color=f"C{index % 10}", label=name, linewidth=1.4,
                        markersize=3)
        ax.set_title(f"{metric} vs {x}", fontsize=10)
        ax.set_xlabel("optimizer step" if x == "step" else "tokens")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return save_figure(figure, Path(out))
