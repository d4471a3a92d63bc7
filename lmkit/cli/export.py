"""``lmkit export``: a checkpoint as a Hugging Face transformers model directory."""

from __future__ import annotations

from rich.table import Table

from lmkit.artifacts import Artifact
from lmkit.cli._util import config_command
from lmkit.interop.export_config import ExportConfig
from lmkit.progress import reporter


def render(artifact: Artifact) -> None:
    if artifact.up_to_date:
        reporter.out.print(f"{artifact.path}: up to date (export {artifact.id[:12]})", markup=False)
        return
    stats = artifact.stats
    table = Table(title=f"export {artifact.id[:12]} → {artifact.path}", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("model", f"{stats['architecture']}, {stats['parameters']:,} parameters")
    table.add_row("library", f"transformers {stats['transformers_version']}")
    if stats["checked"]:
        greedy = "" if "Classification" in stats["architecture"] or "MaskedLM" in stats["architecture"] \
            else ", greedy ids"
        table.add_row("check", f"logits within {stats['max_abs_logit_difference']:.1e} of lmkit's{greedy}, "
                               "token ids equal")
    else:
        table.add_row("check", "skipped (--no-check)")
    architecture = stats["architecture"]
    auto = ("AutoModelForSequenceClassification" if "Classification" in architecture
            else "AutoModelForMaskedLM" if "MaskedLM" in architecture else "AutoModelForCausalLM")
    table.add_row("load with", f"{auto}.from_pretrained({str(artifact.path)!r})")
    reporter.out.print(table)



config_command(
    "export", ExportConfig,
    help="Export a checkpoint (language model or classifier) to Hugging Face transformers: lmkit's modern GPT as "
         "Llama/Qwen2/Qwen3, GPT-2 as GPT2LMHeadModel, classic BERT as BertForMaskedLM, classifiers as their "
         "…ForSequenceClassification (config.json, model.safetensors, tokenizer), checked against lmkit before it is "
         "written. The weight mapping is in lmkit/interop/families.py.\n\n"
         "Example: lmkit export runs/gpt/final --format hf --out hf-model",
    render=render, run="lmkit.interop.export_stage:run")
