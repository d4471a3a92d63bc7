"""``lmkit finetune``: classification, instruction tuning or continued pretraining from a checkpoint."""

from __future__ import annotations

from rich.table import Table

from lmkit.cli._util import config_command
from lmkit.cli.pretrain import checkpoint_table
from lmkit.progress import reporter
from lmkit.stages.finetune_config import FinetuneConfig


def render(result) -> None:
    if result.range_test is not None:
        _render_range_test(result)
        return
    table = checkpoint_table(result.checkpoint)
    if table is None:
        return
    for name, row in (result.comparison or {}).items():
        figures = ", ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
        table.add_row(name, f"{row['parameters']:,} parameters, {figures}, {row['examples_per_s']:,.0f} examples/s")
    reporter.out.print(table)


def _render_range_test(result) -> None:
    test = result.range_test
    table = Table(title="learning-rate range test", title_justify="left")
    table.add_column("lr", justify="right")
    table.add_column("loss (smoothed)", justify="right")
    every = max(1, len(test.lrs) // 12)
    for lr, loss in list(zip(test.lrs, test.losses))[::every]:
        table.add_row(f"{lr:.2e}", f"{loss:.4f}")
    reporter.out.print(table)
    reporter.out.print(f"suggested --lr {test.suggestion:.1e} (a tenth of the rate at the lowest loss; the loss "
                       f"falls fastest at {test.steepest:.1e})", markup=False)
    for path in result.range_test_files:
        reporter.out.print(f"wrote {path}", markup=False)



config_command(
    "finetune", FinetuneConfig,
    help="Finetune a checkpoint: classify (labeled dataset), sft (instruction/response JSONL), chat (multi-turn "
         "conversations JSONL), dpo or orpo (preference pairs JSONL), or clm/mlm "
         "(continued pretraining), with LoRA, frozen layers, distillation from a --teacher, early stopping on "
         "a validation metric and exact resume.\n\n"
         "Example: lmkit finetune runs/gpt/final data/labeled --out runs/classifier --epochs 3",
    render=render, run="lmkit.stages.finetune:run")
