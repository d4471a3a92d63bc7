"""``lmkit export``: a checkpoint as a Hugging Face transformers model directory, or a GGUF file for llama.cpp."""

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
    if stats.get("format") == "gguf":
        _gguf_rows(table, artifact)
        reporter.out.print(table)
        return
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


def _gguf_rows(table: Table, artifact: Artifact) -> None:
    stats = artifact.stats
    table.add_row("model", f"llama.cpp {stats['architecture']}, {stats['parameters']:,} parameters, "
                           f"{stats['gguf_type']} ({stats['bytes'] / 2**20:.1f} MiB)")
    bos = stats["bos_before_prompt"]
    framing = "nothing before a prompt" if bos is None else f"id {bos} before a prompt, as lmkit"
    chat = ", chat template" if stats["chat_template"] else ""
    table.add_row("tokenizer", f"{stats['tokenizer']}, {framing}{chat}")
    if stats["checked"]:
        table.add_row("check", f"tensors read back equal; logits within {stats['max_abs_logit_difference']:.1e} of "
                               f"lmkit's with the {stats['gguf_type']} weights")
    else:
        table.add_row("check", "skipped (--no-check)")
    table.add_row("run with", f"llama-cli -m {artifact.path / 'model.gguf'}")


config_command(
    "export", ExportConfig,
    help="Export a checkpoint (language model or classifier) to Hugging Face transformers: lmkit's modern GPT as "
         "Llama/Qwen2/Qwen3, GPT-2 as GPT2LMHeadModel, classic BERT as BertForMaskedLM, classifiers as their "
         "…ForSequenceClassification (config.json, model.safetensors, tokenizer), checked against lmkit before it is "
         "written. The weight mapping is in lmkit/interop/families.py. --format gguf writes a decoder language model "
         "as one model.gguf for llama.cpp (its llama, qwen2, qwen3 or gpt2 architecture, the tokenizer and chat "
         "template inside; --gguf-type f32, f16, bf16 or q8_0).\n\n"
         "Example: lmkit export runs/gpt/final --format hf --out hf-model\n\n"
         "Example: lmkit export runs/gpt/final --format gguf --gguf-type q8_0 --out gguf-model",
    render=render, run="lmkit.interop.export_stage:run")
