"""Checkpoints for the export and attention tests: tiny trained GPTs, and finetuned ones written directly.

``write_finetuned`` builds a classifier or SFT checkpoint from a pretrained one the way a finetune
stage stores it (model.json "head" / "template" / "lora"), so these tests do not depend on its training.
"""

import os
from pathlib import Path

import torch

from lmkit import artifacts
from lmkit.checkpoint import TrainerState, read_checkpoint
from lmkit.models.classifier import SequenceClassifier, classifier_config
from lmkit.training.checkpoint import write_checkpoint

# transformers must never reach the network in tests (set before it is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def write_finetuned(source: Path, out: Path, *, labels: list[str] | None = None, pooling: str = "last",
                    template: str | None = None, lora_rank: int = 0, seed: int = 0) -> Path:
    """A classifier (``labels``) or SFT (``template``) checkpoint at ``out`` from the checkpoint ``source``,
    with a random head and, with ``lora_rank``, random unmerged LoRA adapters (so merging matters)."""
    checkpoint = read_checkpoint(source)
    config = checkpoint.model_config
    pretrained = checkpoint.build_model()
    torch.manual_seed(seed)
    extra: dict = {}
    if labels is not None:
        config = classifier_config(config)  # as finetune builds it: a classic BERT gains its pooler
        model = SequenceClassifier(config, len(labels), pooling)
        model.backbone.load_state_dict(pretrained.state_dict(), strict=False)  # its lm_head is gone
        torch.nn.init.normal_(model.head.weight, std=0.5)  # class logits that differ clearly
        extra["head"] = {"labels": labels, "pooling": pooling}
    else:
        model = pretrained
        extra["template"] = template
    if lora_rank:
        from lmkit.models.lora import LoRALinear, apply_lora

        apply_lora(model, lora_rank, alpha=2.0 * lora_rank)
        for module in model.modules():
            if isinstance(module, LoRALinear):
                torch.nn.init.normal_(module.lora_b, std=0.05)
        extra["lora"] = {"rank": lora_rank, "alpha": 2.0 * lora_rank, "dropout": 0.0}
    objective = "classify" if labels is not None else "sft"
    tokenizer = artifacts.load(checkpoint.tokenizer_path, kind="tokenizer")
    recipe = artifacts.make_recipe("checkpoint", {"test": str(out), "seed": seed}, [], [])
    with artifacts.ArtifactWriter(out, "checkpoint", recipe, force=True) as writer:
        write_checkpoint(writer.tmp, model, config, objective, ({}, {}), TrainerState(), tokenizer, extra=extra)
        parents = [artifacts.describe_parent("init", checkpoint.artifact, out),
                   {"role": "tokenizer", "path": "tokenizer", "id": tokenizer.id}]
        writer.commit({"test": True}, {"artifacts": parents, "files": []},
                      {"step": 0, "tokens": 0, "objective": objective, "arch": config.arch})
    return out
