"""``lmkit evaluate``: measure a checkpoint on a dataset split, raw files or harness tasks; gate CI on it."""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Optional

from rich.table import Table

from lmkit.cli._util import app, config_command
from lmkit.evaluation.gate import GATE_EXIT_CODE, GateFailed
from lmkit.progress import reporter
from lmkit.stages.evaluate_config import EvaluateConfig

if TYPE_CHECKING:
    from lmkit.stages.evaluate import EvaluationResult


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return "—" if value is None else str(value)


def _metrics_table(result: EvaluationResult) -> Table:
    report = result.report
    where = result.artifact.path if result.artifact is not None else "not saved"
    title = f"{report['task']} report → {where}" + (" (up to date)" if result.up_to_date else "")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    baseline = report.get("baseline")
    if baseline:  # the model's metrics beside the baseline's, and the difference
        table.add_column("baseline", justify="right")
        table.add_column("difference", justify="right")
    for name, value in report["metrics"].items():
        if baseline and name in baseline["difference"]:
            table.add_row(name, _number(value), _number(baseline["metrics"][name]),
                          f"{baseline['difference'][name]:+.4f}")
        elif not (baseline and name.startswith("baseline_")):
            table.add_row(name, _number(value))
    counts = ", ".join(f"{v:,} {k}" for k, v in report.get("counts", {}).items())
    if counts:
        table.add_row("evaluated", counts)
    speed = report["speed"]
    table.add_row("speed", f"{speed['tokens_per_s']:,.0f} tokens/s ({speed['device']}, {speed['precision']})")
    return table


def _per_class_tables(report: dict[str, Any]) -> list[Table]:
    per_class = Table(title="per class", title_justify="left")
    for column in ("class", "precision", "recall", "f1", "support"):
        per_class.add_column(column, justify="left" if column == "class" else "right")
    for label, values in report["per_class"].items():
        per_class.add_row(label, *(f"{values[k]:.4f}" for k in ("precision", "recall", "f1")), str(values["support"]))
    confusion = Table(title="confusion matrix", title_justify="left")
    confusion.add_column("gold \\ predicted")
    for label in report["confusion"]["labels"]:
        confusion.add_column(label, justify="right")
    for label, row in zip(report["confusion"]["labels"], report["confusion"]["matrix"]):
        confusion.add_row(label, *map(str, row))
    return [per_class, confusion]


def _comparison_table(comparison: dict[str, Any]) -> Table:
    table = Table()
    for column in ("metric", "this", "other", "difference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in comparison["rows"]:
        delta = row["delta"]
        shown = "—" if delta is None else (f"{delta:+.4f}" if math.isfinite(delta) else str(delta))
        table.add_row(row["metric"], _number(row["this"]), _number(row["other"]), shown)
    return table


def render(result: EvaluationResult) -> None:
    reporter.out.print(_metrics_table(result))
    report = result.report
    if report.get("per_class"):
        for table in _per_class_tables(report):
            reporter.out.print(table)
    if report.get("languages"):
        languages = Table(title="per language", title_justify="left")
        for column in ("language", "documents", "tokens", "loss", "ppl", "bpb"):
            languages.add_column(column, justify="left" if column == "language" else "right")
        for lang, v in report["languages"].items():
            languages.add_row(lang, str(v["documents"]), f"{v['tokens']:,}", f"{v['loss']:.4f}", _number(v["ppl"]),
                              f"{v['bpb']:.4f}")
        reporter.out.print(languages)
    if result.comparison is not None:
        reporter.out.print(f"compared with {result.comparison['with']}:", markup=False, soft_wrap=True)
        reporter.out.print(_comparison_table(result.comparison))
        for warning in result.comparison["warnings"]:
            reporter.warn(f"--compare: {warning}")
    for note in report.get("notes", []):
        reporter.info(f"note: {note}")
    if result.failures:
        raise GateFailed("\n".join(result.failures))



config_command(
    "evaluate", EvaluateConfig,
    help="Evaluate a checkpoint: loss, perplexity and bits per byte (masked-LM loss and accuracy for BERT), "
         "classification metrics, zero-shot multiple choice, SFT generation, preference accuracy on chosen/rejected "
         "pairs, or lm-evaluation-harness tasks; "
         "writes a report artifact with --out.\n\n"
         f"Exit codes: 0 done; 1 bad input; 2 bad usage; {GATE_EXIT_CODE} a --fail-if condition held "
         "(the report is still written).\n\n"
         "Examples: lmkit evaluate runs/gpt/final data --out reports/gpt; "
         "lmkit evaluate runs/cls/final labeled --fail-if \"accuracy<0.8\"",
    render=render, run="lmkit.stages.evaluate:run")


def _repeatable_fail_if() -> None:
    """Let --fail-if be repeated: config_command declares list fields as one comma-separated option, and
    click would silently keep only the last of several, dropping a CI condition without a word."""
    command = next(c for c in app.registered_commands if c.name == "evaluate")
    signature = inspect.signature(command.callback)
    parameters = [p.replace(annotation=Optional[list[str]]) if p.name == "fail_if" else p
                  for p in signature.parameters.values()]
    command.callback.__signature__ = signature.replace(parameters=parameters)


_repeatable_fail_if()
