"""Configuration of ``lmkit pretrain``: every field is a flag and a key of ``--config``.

The training options (batch, optimization, limits, run directory) are training.options'; this
file adds what to train: the dataset, the model and the objective. Pretraining keeps the shared
defaults as they are.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from lmkit.config import option
from lmkit.errors import ConfigError, UserError
from lmkit.training.options import RUN, STOPPING, TrainingOptions
from lmkit.units import parse_duration

DEFAULT_STEPS = 500  # when no --max-steps, --max-tokens or --max-time is given


# The presets of lmkit/models/presets.py by family, for --help (written out here: parsing flags loads no torch).
PRESET_HELP = ("gpt-tiny, gpt-small: Llama-style decoder (RMSNorm, rotary positions, SwiGLU); gpt2-tiny, gpt2-124m: "
               "GPT-2 (LayerNorm, learned positions, GELU, biases); bert-tiny, bert-small, bert-base: classic BERT "
               "(post-norm LayerNorm, learned positions, segment embeddings, pooler); encoder-tiny, encoder-small, "
               "encoder-base: lmkit's modern encoder (pre-norm RMSNorm, rotary positions); lstm-small")


@dataclass(kw_only=True)
class PretrainConfig(TrainingOptions):
    # -- what to train -----------------------------------------------------------------------
    dataset: list[str] = option([], "Dataset artifact(s) made by `lmkit preprocess`; several are mixed, "
                                "sampled by --weights or --mix-alpha (they must share one tokenizer).",
                                positional=True, affects_output=False)  # their ids, not paths, are the identity
    weights: list[float] = option([], "Mixture: each dataset's share of the training samples (comma-separated, one "
                                  "per dataset, normalized).")
    mixture: str | None = option(None, "Mixture file (TOML): [[source]] tables of dataset (a path, relative to the "
                                 "file) and weight, or a top-level alpha instead of weights; in place of DATASET "
                                 "arguments and --weights.", affects_output=False)  # its datasets and weights are
    mix_alpha: float | None = option(None, "Mixture: shares in proportion to each dataset's train tokens to this "
                                     "power (XLM's temperature alpha: 1 as the sizes, 0 equal; e.g. 0.3 for "
                                     "languages). Default without --weights: 1.")
    model: str = option("gpt-tiny", f"Model preset ({PRESET_HELP}); the flags below override its dimensions; "
                        "`lmkit info CHECKPOINT` names a model's family.", section="model")
    n_layer: int | None = option(None, "Override: number of blocks / LSTM layers.", section="model")
    n_head: int | None = option(None, "Override: attention heads.", section="model")
    d_model: int | None = option(None, "Override: model width.", section="model")
    d_ff: int | None = option(None, "Override: feed-forward width.", section="model")
    block_size: int | None = option(None, "Override: longest sequence the model supports.", section="model")
    dropout: float | None = option(None, "Override: dropout probability.", section="model")
    qk_norm: bool | None = option(None, "Override: RMSNorm on queries and keys (gpt, bert).", section="model")
    mlp: str | None = option(None, "Override: feed-forward type, swiglu or gelu (gpt, bert).",
                             choices=("swiglu", "gelu"), section="model")
    share_layers: int | None = option(None, "Override: ALBERT's cross-layer sharing, this many distinct blocks "
                                      "(1: every layer shares one); must divide --n-layer.", section="model")
    embedding_dim: int | None = option(None, "Override: ALBERT's factorized embedding width (tokens embedded in "
                                       "it, projected to --d-model).", section="model")
    objective: str = option("auto", "Training objective: clm (causal, for gpt/lstm), mlm (masked, for bert), "
                            "mlm+sop or mlm+nsp (masked LM plus ALBERT's sentence-order or BERT's next-sentence "
                            "prediction on pairs of segments of a document, for bert: adds segment embeddings, BERT's "
                            "pooler and a sentence head), or auto (by architecture).",
                            choices=("auto", "clm", "mlm", "mlm+sop", "mlm+nsp"), section="model", resume=True)
    init_from: str | None = option(None, "Start from this checkpoint's weights (not its optimizer or step).",
                                   affects_output=False, section="model")  # by id, like the dataset
    shard: bool = option(False, "Shard parameters across processes with FSDP2 (fully_shard).", section=RUN,
                         resume=True)
    budget: str = option("", "Choose the model size, steps, batch and learning rate for this much time on this "
                         "machine, e.g. 15m (a short probe measures the training speed; a scaling law that counts "
                         "repeated epochs of the dataset picks the size). Flags given explicitly win; "
                         "--print-config shows the choice.", section=STOPPING)
    budget_flops: float = option(0.0, "As --budget, for this many training FLOPs (no probe: the same choice on "
                                 "every machine).", section=STOPPING)
    eval_tasks: list[str] = option([], "Downstream tasks scored at each validation (--eval-every): 'heldout' (two "
                                   "4-way choice tasks made from the dataset's validation documents: a passage's "
                                   "next tokens among other documents', its next words among their shuffles), "
                                   "JSONL files of {context, choices, answer} as `lmkit evaluate --task choice` reads "
                                   "them, or lm-evaluation-harness task names found in --harness-include. Logged as "
                                   "val_NAME_accuracy and val_NAME_acc_norm (NAME: the file's stem or the task), "
                                   "val_TASK_METRIC for harness tasks, val_tasks_score (the choice tasks' accuracies "
                                   "centered on chance and averaged, as nanochat's CORE score) and their time as "
                                   "eval_tasks_s. Causal models (--objective clm).",
                                   affects_output=False, section=STOPPING)
    eval_task_items: int = option(200, "--eval-tasks: score the first N items of each task (0: all).",
                                  affects_output=False, section=STOPPING)
    harness_include: str | None = option(None, "--eval-tasks: a directory of lm-evaluation-harness task files "
                                         "(YAML and their local data: nothing is downloaded) whose tasks "
                                         "--eval-tasks may name; needs lmkit[harness].",
                                         affects_output=False, section=STOPPING)

    def problems(self) -> list[str]:
        problems = super().problems()
        if not self.dataset and not self.mixture:
            problems.append("DATASET: give at least one dataset artifact (or a --mixture file)")
        if self.mixture and (self.dataset or self.weights or self.mix_alpha is not None):
            problems.append("--mixture: names the datasets and their weights itself; drop the DATASET arguments, "
                            "--weights and --mix-alpha")
        if self.weights:
            if len(self.dataset) < 2:
                problems.append("--weights: mixes several datasets; give two or more DATASET arguments")
            elif len(self.weights) != len(self.dataset):
                problems.append(f"--weights: {len(self.weights)} weights for {len(self.dataset)} datasets; give one "
                                "per dataset, in order")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                problems.append("--weights: must be non-negative and sum to a positive number")
            if self.mix_alpha is not None:
                problems.append("--weights and --mix-alpha: give one (explicit shares, or shares from the sizes)")
        if self.mix_alpha is not None:
            if len(self.dataset) < 2:
                problems.append("--mix-alpha: mixes several datasets; give two or more DATASET arguments")
            if not 0.0 <= self.mix_alpha <= 1.0:
                problems.append(f"--mix-alpha: must be in [0, 1], got {self.mix_alpha}")
        try:
            parse_duration(self.budget)
        except ValueError as exc:
            problems.append(f"--budget: {exc}")
        if self.budget and self.budget_flops:
            problems.append("--budget and --budget-flops: give one (time on this machine, or FLOPs)")
        if self.budget_flops < 0:
            problems.append("--budget-flops: must not be negative")
        if self.eval_task_items < 0:
            problems.append("--eval-task-items: must not be negative")
        if self.eval_tasks and self.shard:
            problems.append("--eval-tasks and --shard: the tasks score a whole model; drop one")
        if (self.budget or self.budget_flops) and self.init_from:
            problems.append("--budget and --init-from: the budget chooses a model, --init-from fixes it; drop one")
        if self.resume and self.init_from:  # (--auto-resume takes both: --init-from starts it, later launches resume)
            problems.append("--resume and --init-from: a resumed run already has its weights; drop --init-from")
        return problems

    def with_mixture(self) -> "PretrainConfig":
        """This config with the --mixture file's datasets and weights (or alpha) in place of the file."""
        if not self.mixture:
            return self
        path = Path(self.mixture)
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UserError(f"--mixture {path}: cannot read it ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid TOML ({exc})") from None
        unknown = sorted(set(table) - {"source", "alpha"})
        sources = table.get("source")
        if unknown:
            raise UserError(f"{path}: unknown key {unknown[0]!r} (a mixture file has [[source]] tables and an "
                            "optional alpha)")
        if not isinstance(sources, list) or len(sources) < 2 or not all(isinstance(s, dict) for s in sources):
            raise UserError(f"{path}: give two or more [[source]] tables, each with a dataset")
        alpha = table.get("alpha")
        datasets, weights = [], []
        for number, source in enumerate(sources, 1):
            extra = sorted(set(source) - {"dataset", "weight"})
            if extra or not isinstance(source.get("dataset"), str):
                raise UserError(f"{path}: [[source]] {number}: " + (f"unknown key {extra[0]!r}" if extra else
                                                                   "needs dataset = \"PATH\""))
            weight = source.get("weight")
            if (weight is None) != (alpha is not None):
                raise UserError(f"{path}: [[source]] {number}: " + ("give every source a weight, or a top-level "
                                                                   "alpha" if weight is None else
                                                                   "has a weight and the file an alpha; give one"))
            if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
                raise UserError(f"{path}: [[source]] {number}: weight must be a number, got {weight!r}")
            datasets.append(str((path.parent / source["dataset"]).resolve()))
            weights.append(float(weight) if weight is not None else None)
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))):
            raise UserError(f"{path}: alpha must be a number, got {alpha!r}")
        try:  # the flags' checks, worded for the file
            return dataclasses.replace(self, mixture=None, dataset=datasets,
                                       weights=[] if alpha is not None else weights,
                                       mix_alpha=float(alpha) if alpha is not None else None)
        except ConfigError as exc:
            raise UserError(f"{path}: " + exc.problems[0].replace("--weights", "weight").replace("--mix-alpha", "alpha")
                            ) from None

    def model_overrides(self) -> dict:
        return {name: getattr(self, name) for name in ("n_layer", "n_head", "d_model", "d_ff", "block_size",
                                                        "dropout", "qk_norm", "mlp", "share_layers", "embedding_dim")
                if getattr(self, name) is not None}

