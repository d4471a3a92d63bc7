"""``lmkit runs DIR``: the training runs under a directory in one table (the settings they differ in, final
metrics, tokens, time, throughput, MFU), and chosen metrics of them all on one chart."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from lmkit.cli._util import app, handle_errors
from lmkit.errors import UserError
from lmkit.progress import reporter

# Beyond this many setting and validation columns a row no longer fits a terminal (the runs of a whole pipeline
# differ in dozens of settings): they go into two columns of "name value" lines instead.
WIDE_COLUMNS = 8


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, minutes = seconds // 3600, seconds % 3600 // 60
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds % 60:02d}s" if minutes else f"{seconds}s"


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command("runs", no_args_is_help=True)
@handle_errors
def runs(
    root: Path = typer.Argument(..., metavar="DIR", help="A directory of training runs (each a run directory of "
                                "lmkit pretrain or finetune, holding metrics.jsonl), searched recursively; or one "
                                "run directory."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Also plot these metrics of every run on one chart "
                                       "each, e.g. loss,val_loss (any figure of metrics.jsonl; needs --out and the "
                                       "plot extra).", show_default=False),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG file for --plot.", show_default=False),
    x: str = typer.Option("step", "--x", help="--plot's horizontal axis: step or tokens."),
) -> None:
    """Table the training runs under DIR: the settings in which they differ (from each config.toml), how far
    each got (steps, tokens, training time; final/ when it finished), median tokens/s and MFU, the last
    training loss and the last value of each validation metric (metrics.jsonl).

    Example: lmkit runs runs/ --plot loss,val_loss --out compare.png
    """
    from lmkit.training.compare import compare, metric_names

    wanted = [m.strip() for m in (plot or "").split(",") if m.strip()]
    if plot is not None and not wanted:
        raise UserError("--plot: name at least one metric, e.g. --plot loss,val_loss")
    if wanted and out is None:
        raise UserError("--out: required with --plot (e.g. --out compare.png)")
    if out is not None and not wanted:
        raise UserError("--out: only with --plot (name the metrics to plot)")
    if out is not None and out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: must be a .png file")
    if x not in ("step", "tokens"):
        raise UserError(f"--x {x}: must be step or tokens")
    summaries, differing = compare(root)
    if wanted:
        known = metric_names(summaries)
        unknown = [m for m in wanted if m not in known]
        if unknown:
            raise UserError(f"--plot: {', '.join(unknown)} not logged by any run under {root} (logged: "
                            f"{', '.join(known)})")

    val_keys = sorted({key for s in summaries for key in s.final if key != "loss"},
                      key=lambda k: (k != "val_loss", k))
    wide = len(differing) + len(val_keys) <= WIDE_COLUMNS
    said = (", ".join(differing) or "none") if wide else f"{len(differing)}, in the settings column"
    table = Table(title=f"{len(summaries)} run(s) under {root}" + ("" if len(summaries) < 2 else
                  f"; settings that differ: {said}"), title_justify="left", show_lines=not wide)
    table.add_column("run")
    for key in differing if wide else ():
        table.add_column(key)
    for name in ("state", "steps", "tokens", "time", "tokens/s", "MFU", "loss", *(val_keys if wide else ())):
        table.add_column(name, justify="left" if name == "state" else "right")
    if not wide:
        table.add_column("validation")
        table.add_column("settings")
    for s in summaries:
        figures = [_value(s.final.get("loss"))]
        if wide:
            settings = [_value(s.config.get(key)) for key in differing]
            figures += [_value(s.final.get(key)) for key in val_keys]
        else:  # each run's own: the validation metrics it logged, the differing settings it has
            settings = []
            figures += ["\n".join(f"{key} {_value(s.final[key])}" for key in val_keys if key in s.final),
                        "\n".join(f"{key}={_value(s.config[key])}" for key in differing if key in s.config)]
        table.add_row(
            s.name, *settings, "final" if s.finished else "unfinished",
            f"{s.step:,}", f"{s.tokens:,}", _duration(s.seconds),
            "-" if s.tokens_per_s is None else f"{s.tokens_per_s:,.0f}",
            "-" if s.mfu is None else f"{s.mfu:.1%}", *figures)
    reporter.out.print(table)
    if wanted:
        from lmkit.plotting import plot_metrics

        path = plot_metrics([s.metrics for s in summaries], wanted, out, x=x, names=[s.name for s in summaries])
        reporter.out.print(f"{path}: {', '.join(wanted)} of {len(summaries)} run(s)", markup=False, soft_wrap=True)
