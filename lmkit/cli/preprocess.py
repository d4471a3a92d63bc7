"""``lmkit preprocess``: raw text to a tokenizer and verified Arrow shards."""

from __future__ import annotations

from rich.table import Table

from lmkit.artifacts import Artifact
from lmkit.cli._util import config_command
from lmkit.progress import reporter
from lmkit.stages import preprocess
from lmkit.stages.preprocess_config import PreprocessConfig


def render(artifact: Artifact) -> None:
    if artifact.up_to_date:
        reporter.out.print(f"{artifact.path}: up to date (dataset {artifact.id[:12]})", markup=False)
        return
    stats = artifact.stats
    table = Table(title=f"dataset {artifact.id[:12]} → {artifact.path}", show_header=True, title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("documents in", f"{stats['documents_in']:,}")
    table.add_row("documents kept", f"{stats['documents_kept']:,}")
    for reason, count in stats["dropped"].items():
        table.add_row(f"  dropped: {reason}", f"{count:,}")
    if stats["encoding_replaced"]:
        table.add_row("  invalid UTF-8 replaced", f"{stats['encoding_replaced']:,}")
    for split, split_stats in stats["splits"].items():
        table.add_row(f"{split}", f"{split_stats['documents']:,} docs, {split_stats['tokens']:,} tokens, "
                      f"{len(split_stats['shards'])} shard(s)")
    table.add_row("text bytes", f"{stats['bytes']:,}")
    table.add_row("tokens per byte", f"{stats['tokens_per_byte']:.4f}")
    table.add_row("vocabulary", f"{stats['vocab_size']:,} ({stats['token_type']})")
    if "labels" in stats:
        table.add_row("labels", ", ".join(stats["labels"]["names"]))
    if "pairs" in stats:
        table.add_row("pairs: second texts", f"{stats['pairs']['tokens']:,} tokens (not counted above)")
    table.add_row("throughput", f"{stats['mb_per_s']:.2f} MB/s, {stats['tokens_per_s']:,.0f} tokens/s "
                  f"({stats['seconds']:.1f} s)")
    reporter.out.print(table)


config_command(
    "preprocess", PreprocessConfig,
    help="Clean, filter, deduplicate and split raw text, train (or reuse) a tokenizer, and write "
         "tokenized Arrow shards as a dataset artifact.\n\n"
         "Example: lmkit preprocess corpus/ --out data --vocab-size 4000",
    render=render, run=preprocess.run)
