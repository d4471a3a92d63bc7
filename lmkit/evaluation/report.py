"""The report artifact's files: ``report.json`` (flat metrics, method, speed, lineage), ``report.md``,
``confusion.png`` (with the ``lmkit[plot]`` extra) and ``predictions.jsonl``; reading another report
back and comparing metrics with it (``--compare``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from lmkit import artifacts
from lmkit.errors import UserError

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion.png"
PREDICTIONS = "predictions.jsonl"
PLOT_EXTRA = "lmkit[plot]"


def write_predictions(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_confusion_png(path: Path, labels: list[str], matrix: list[list[int]]) -> bool:
    """Plot the confusion matrix; False (nothing written) when matplotlib is not installed.

    Drawn on a bare Figure (Agg canvas, no pyplot): no global state, no display needed.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    size = max(3.0, 0.6 * len(labels) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            axes.text(j, i, str(count), ha="center", va="center", color="white" if count > top / 2 else "black")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_title("confusion matrix")
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    figure.colorbar(image, ax=axes, fraction=0.046)
    figure.tight_layout()
    # No software/version stamp in the file: the same matrix always gives the same bytes.
    figure.savefig(path, format="png", dpi=100, metadata={"Software": None})
    return True


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """A human-readable report.md: what was evaluated, how, the metrics, and for classifiers the table per class."""
    lines = [f"# Evaluation report: {report['task']}", ""]
    checkpoint = report["checkpoint"]
    lines.append(f"- checkpoint: `{checkpoint['path']}` ({checkpoint['arch']}, objective {checkpoint['objective']}, "
                 f"id {checkpoint['id'][:12]})")
    data = report.get("data")
    if data:
        if data["kind"] == "dataset":
            lines.append(f"- data: dataset `{data['path']}`, split {data['split']} (id {data['id'][:12]})")
        else:
            lines.append(f"- data: {', '.join(f'`{p}`' for p in data['files'])}")
        lines.append(f"- examples: {report['examples']:,}")
    method = ", ".join(f"{k} {v}" for k, v in report["method"].items() if not isinstance(v, dict))
    lines += [f"- method: {method}", ""]
    baseline = report.get("baseline")
    if baseline:
        lines += ["| metric | model | baseline | difference |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {_number(value)} | {_number(baseline['metrics'][name])} | "
                  f"{baseline['difference'][name]:+.4f} |" for name, value in report["metrics"].items()
                  if name in baseline["difference"]]
        lines += [f"| {name} | {_number(value)} | | |" for name, value in report["metrics"].items()
                  if name not in baseline["difference"] and not name.startswith("baseline_")]
        shown = ", ".join(f"{k} {v}" for k, v in baseline["method"].items() if not isinstance(v, dict))
        lines += ["", f"Baseline: {shown}."]
    else:
        lines += ["| metric | value |", "| --- | ---: |"]
        lines += [f"| {name} | {_number(value)} |" for name, value in report["metrics"].items()]
    speed = report["speed"]
    lines += ["", f"Speed: {speed['tokens_per_s']:,.0f} tokens/s ({speed['tokens']:,} tokens in "
              f"{speed['seconds']:.2f} s of model time, {speed['device']}, {speed['precision']}).", ""]
    if report.get("languages"):
        lines += ["## Per language", "", "| language | documents | tokens | bytes | loss | ppl | bpb |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {lang} | {v['documents']} | {v['tokens']} | {v['bytes']} | {v['loss']:.4f} | "
                  f"{_number(v['ppl'])} | {v['bpb']:.4f} |" for lang, v in report["languages"].items()]
        lines.append("")
    if report.get("per_class"):
        lines += ["## Per class", "", "| class | precision | recall | f1 | support |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {label} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
                  for label, v in report["per_class"].items()]
        confusion = report["confusion"]
        lines += ["", "## Confusion matrix (rows gold, columns predicted)", "",
                  "| gold \\ predicted | " + " | ".join(confusion["labels"]) + " |",
                  "| --- |" + " ---: |" * len(confusion["labels"])]
        lines += [f"| {label} | " + " | ".join(str(c) for c in row) + " |"
                  for label, row in zip(confusion["labels"], confusion["matrix"])]
        if report.get("files", {}).get("confusion_png"):
            lines += ["", f"![confusion matrix]({CONFUSION_PNG})"]
        lines.append("")
    for note in report.get("notes", []):
        lines.append(f"Note: {note}")
    return "\n".join(lines).rstrip() + "\n"


def load_report(path: str | Path) -> dict[str, Any]:
    """A report to compare with: a report artifact directory (verified) or a report.json file."""
    path = Path(path)
    if path.is_dir():
        report_file = artifacts.load(path, kind="report").file(REPORT_JSON)
    elif path.is_file():
        report_file = path
    else:
        raise UserError(f"{path}: no such report (--compare takes a report directory or its report.json)")
    try:
        report = json.loads(report_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{report_file}: not a readable report.json ({exc})") from None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        raise UserError(f"{report_file}: not an lmkit report (no \"metrics\" object)")
    return report


def compare(current: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Metric by metric: this report's value, the other's and the difference; and what makes the two
    not directly comparable (another task, or another evaluation method)."""
    rows = []
    names = list(current["metrics"]) + [n for n in other["metrics"] if n not in current["metrics"]]
    for name in names:
        this, that = current["metrics"].get(name), other["metrics"].get(name)
        numeric = isinstance(this, (int, float)) and isinstance(that, (int, float))
        rows.append({"metric": name, "this": this, "other": that, "delta": this - that if numeric else None})
    warnings = []
    if current.get("task") != other.get("task"):
        warnings.append(f"different tasks: {current.get('task')} vs {other.get('task')}")
    methods = current.get("method", {}), other.get("method", {})
    differing = sorted(k for k in set(methods[0]) | set(methods[1]) if methods[0].get(k) != methods[1].get(k))
    if differing:
        warnings.append("different methods: " + ", ".join(f"{k} {methods[0].get(k)} vs {methods[1].get(k)}"
                                                          for k in differing))
    return {"rows": rows, "warnings": warnings}
