"""Merging a checkpoint's LoRA adapters into its weights: a new checkpoint artifact whose parent
is the unmerged one. Optimizer state is not carried over (it belongs to the adapters)."""

from __future__ import annotations

import json
from pathlib import Path

from lmkit import artifacts
from lmkit.checkpoint import MODEL_CONFIG_FILE, TrainerState, read_checkpoint
from lmkit.errors import UserError
from lmkit.training.checkpoint import write_checkpoint


def merge_checkpoint(source: str | Path, out: str | Path, force: bool = False) -> artifacts.Artifact:
    checkpoint = read_checkpoint(source)
    if checkpoint.lora is None:
        raise UserError(f"{source}: has no unmerged LoRA adapters (its model.json has no \"lora\"); nothing to merge")
    out = Path(out)
    if out.resolve() == checkpoint.path.resolve():
        raise UserError(f"--out {out}: is the checkpoint being merged; choose another directory")
    model = checkpoint.inference_model()
    described = json.loads(checkpoint.artifact.file(MODEL_CONFIG_FILE).read_text())
    # Everything model.json carries besides what write_checkpoint writes itself and the LoRA now merged in
    # (a classifier's or QA model's head, a template, a chat format, stop ids).
    extra = {key: value for key, value in described.items() if key not in ("model", "objective", "lora")}
    tokenizer = artifacts.load(checkpoint.tokenizer_path, kind="tokenizer")
    recipe = artifacts.make_recipe("checkpoint", {"merge_lora": checkpoint.artifact.id}, [], [])
    with artifacts.ArtifactWriter(out, "checkpoint", recipe, force=force) as writer:
        if writer.up_to_date:
            return writer.existing
        state = TrainerState(**{**checkpoint.trainer_state().__dict__})
        version = write_checkpoint(writer.tmp, model, checkpoint.model_config, checkpoint.objective,
                                   ({}, {"optimizers": [], "keys": "index"}), state, tokenizer, extra)
        parents = [artifacts.describe_parent("unmerged", checkpoint.artifact, out),
                   {"role": "tokenizer", "path": "tokenizer", "id": tokenizer.id}]
        stats = {**checkpoint.artifact.stats, "merged_lora": checkpoint.lora}
        return writer.commit({"merge_lora": str(source)}, {"artifacts": parents, "files": []}, stats,
                             version)
