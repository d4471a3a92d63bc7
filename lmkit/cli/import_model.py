"""``lmkit import``: a local Hugging Face model (or tokenizer) directory as an lmkit artifact."""

from __future__ import annotations

from rich.table import Table

from lmkit.artifacts import Artifact
from lmkit.cli._util import config_command
from lmkit.interop.import_config import ImportConfig
from lmkit.progress import reporter


def render(artifact: Artifact) -> None:
    kind = artifact.manifest["kind"]
    if artifact.up_to_date:
        reporter.out.print(f"{artifact.path}: up to date ({kind} {artifact.id[:12]})", markup=False)
        return
    stats = artifact.stats
    table = Table(title=f"{kind} {artifact.id[:12]} → {artifact.path}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    if kind == "tokenizer":
        table.add_row("tokenizer", f"{stats['model']}, {stats['vocab_size']:,} tokens")
        table.add_row("use with", f"lmkit preprocess ... --tokenizer {artifact.path}")
        reporter.out.print(table)
        return
    table.add_row("model", f"{stats['architecture']}, {stats['parameters']:,} parameters")
    table.add_row("as", f"lmkit {stats['arch']} ({stats['objective']})")
    if stats["checked"]:
        table.add_row("check", f"outputs within {stats['max_abs_logit_difference']:.1e} of transformers'")
    else:
        table.add_row("check", "skipped (--no-check)")
    if stats["initialized"]:
        table.add_row("new weights", ", ".join(stats["initialized"][:4]))
    table.add_row("tokenizer", f"{artifact.path}/tokenizer (lmkit preprocess ... --tokenizer "
                  f"{artifact.path}/tokenizer)")
    reporter.out.print(table)


config_command(
    "import", ImportConfig,
    help="Import a local Hugging Face model directory as an lmkit checkpoint: LlamaForCausalLM, MistralForCausalLM, "
         "Qwen2ForCausalLM, Qwen3ForCausalLM, GPT2LMHeadModel/GPT2Model, BertForMaskedLM/BertModel (safetensors), "
         "with its tokenizer as OUT/tokenizer; checked against transformers before it is written. A directory "
         "holding only a tokenizer becomes a tokenizer artifact. Nothing is downloaded. The weight mapping is in "
         "lmkit/interop/families.py.\n\n"
         "Example: lmkit import ~/models/gpt2 --out ckpt/gpt2 && lmkit finetune ckpt/gpt2 data --out runs/clf",
    render=render, run="lmkit.interop.import_stage:run")
