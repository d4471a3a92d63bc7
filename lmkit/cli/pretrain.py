"""``lmkit pretrain``: train a GPT, BERT or LSTM language model from a dataset artifact."""

from __future__ import annotations

import json

from rich.table import Table

from lmkit.artifacts import Artifact
from lmkit.cli._util import config_command
from lmkit.progress import reporter
from lmkit.stages.pretrain_config import PretrainConfig


def checkpoint_table(artifact: Artifact) -> Table | None:
    """The table every training command prints for its final checkpoint; None (after saying so) when
    the run was up to date."""
    if artifact.up_to_date:
        reporter.out.print(f"{artifact.path}: up to date (checkpoint {artifact.id[:12]})", markup=False)
        return None
    stats = artifact.stats
    table = Table(title=f"checkpoint {artifact.id[:12]} → {artifact.path}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    trained = stats.get("trainable_parameters", stats["parameters"])
    trained_text = f" ({trained:,} trained)" if trained != stats["parameters"] else ""
    trained_for = f"task {stats['task']}" if "task" in stats else f"objective {stats['objective']}"
    table.add_row("model", f"{stats['arch']}, {stats['parameters']:,} parameters{trained_text}, {trained_for}")
    table.add_row("trained", f"{stats['step']:,} steps, {stats['tokens']:,} tokens")
    for key, value in last_evaluation(artifact.path.parent / "metrics.jsonl").items():
        if key.startswith("val_"):
            table.add_row(f"{key} (last evaluation)", f"{value:.4f}")
    if stats.get("best_step") is not None:
        table.add_row("best", f"step {stats['best_step']} ({stats['metric']} {stats['best_metric']:.4f})")
    for earlier in stats.get("history", []):
        changed = ", ".join(f"{key} {value}" for key, value in earlier["changed"].items())
        table.add_row(f"until step {earlier['until_step']:,}", changed or "(same settings)")
    return table


def render(artifact: Artifact) -> None:
    table = checkpoint_table(artifact)
    if table is not None:
        reporter.out.print(table)


def last_evaluation(path) -> dict:
    if not path.exists():
        return {}
    evals = [json.loads(line) for line in path.read_text().splitlines() if '"val_loss"' in line]
    return evals[-1] if evals else {}



config_command(
    "pretrain", PretrainConfig,
    help="Pretrain a language model (GPT, BERT or LSTM) on a dataset artifact, with checkpoints, exact resume "
         "and validation. Runs data-parallel under torchrun.\n\n"
         "Example: lmkit pretrain data --out runs/gpt --model gpt-tiny --max-steps 300",
    render=render, run="lmkit.stages.pretrain:run", prepare="lmkit.stages.pretrain:prepare")
