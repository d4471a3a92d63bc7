"""Configuration of ``lmkit finetune``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lmkit.config import flag_name, option, validate
from lmkit.data.instructions import DEFAULT_TEMPLATE
from lmkit.stages.pretrain_config import OPTIMIZERS, training_problems
from lmkit.training.schedule import SCHEDULES

TASKS = ("auto", "classify", "sft", "clm", "mlm")
METRICS = ("auto", "accuracy", "f1", "loss")


def parse_freeze(text: str) -> tuple[bool, int]:
    """``--freeze`` as (freeze the embeddings, number of first blocks to freeze)."""
    embeddings, layers = False, 0
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "embeddings":
            embeddings = True
        elif part.startswith("layers:") and part[7:].isdigit() and int(part[7:]) > 0:
            layers = int(part[7:])
        else:
            raise ValueError(f"unknown part {part!r} (use embeddings, layers:K, or both comma-separated)")
    return embeddings, layers


@dataclass(kw_only=True)
class FinetuneConfig:
    # -- what to train on --------------------------------------------------------------------------
    base: str = option(help="Checkpoint to start from (its tokenizer, architecture and weights).", positional=True,
                       affects_output=False)  # its id goes into the run's identity
    data: str = option(help="Training data: a dataset artifact (labeled for classify; any for clm/mlm) or, for "
                       "sft, a JSONL file of instruction/response records.", positional=True, affects_output=False)
    out: str = option(help="Run directory: step-XXXXXXXX/ and final/ checkpoints, metrics.jsonl.", short="-o",
                      affects_output=False)
    task: str = option("auto", "classify, sft (instruction tuning), clm or mlm (continued pretraining); auto: "
                       "classify for a labeled dataset, sft for a .jsonl file, else the base's objective.",
                       choices=TASKS)
    # -- the model -----------------------------------------------------------------------------------
    scratch: bool = option(False, "Start from random weights of the base's architecture (a baseline for what "
                           "pretraining buys); the base still gives the tokenizer.")
    model: str | None = option(None, "Train a new model of this preset instead of the base's (random weights, the "
                               "base's tokenizer): e.g. a smaller student for --teacher.")
    n_layer: int | None = option(None, "With --model: number of blocks / LSTM layers.")
    n_head: int | None = option(None, "With --model: attention heads.")
    d_model: int | None = option(None, "With --model: model width.")
    d_ff: int | None = option(None, "With --model: feed-forward width.")
    dropout: float | None = option(None, "Dropout probability (default: the base model's).")
    pooling: str = option("auto", "classify: the vector the head reads: last (causal models), cls (BERT), or "
                          "mean; auto: last or cls.", choices=("auto", "last", "cls", "mean"))
    # -- data ------------------------------------------------------------------------------------------
    val_fraction: float = option(0.1, "Share of the training data held out for validation when the data has no "
                                 "validation split (stratified by label for classify).")
    max_train_examples: int = option(0, "classify, sft: train on a seeded random subset of this many examples "
                                     "(0: all), e.g. for learning curves; validation is unchanged.")
    class_weights: str = option("none", "classify: weight the loss by inverse class frequency (balanced).",
                                choices=("none", "balanced"))
    token_dropout: float = option(0.0, "classify: drop each input token with this probability during training "
                                  "(augmentation).")
    prompt_field: str = option("prompt", "sft: JSONL field of the instruction.")
    response_field: str = option("response", "sft: JSONL field of the response.")
    template: str = option(DEFAULT_TEMPLATE, "sft: prompt template, {prompt} marks the instruction; stored in "
                           "the checkpoint so that generate applies it.")
    seq_len: int = option(0, "Longest training sequence in tokens; 0 means min(block size, 256).")
    # -- parameter-efficient finetuning ----------------------------------------------------------------
    lora_rank: int = option(0, "LoRA rank on attention and MLP projections (0: full finetuning).")
    lora_alpha: float = option(16.0, "LoRA scale numerator: updates are scaled by alpha / rank.")
    lora_dropout: float = option(0.05, "Dropout on the LoRA branch's input.")
    lora_merge: bool = option(True, "Merge the adapters into final/ (a plain checkpoint); --no-lora-merge keeps "
                              "them (merge later with `lmkit merge-lora`).")
    freeze: str = option("", "Freeze parameters: embeddings, layers:K (the first K blocks), or both "
                         "comma-separated.")
    # -- distillation ----------------------------------------------------------------------------------
    teacher: str | None = option(None, "Distill from this checkpoint: soft targets at --temperature mixed with "
                                 "the hard labels.", affects_output=False)  # by id
    temperature: float = option(2.0, "Distillation temperature (Hinton et al. 2015).")
    distill_alpha: float = option(0.5, "Weight of the soft-target loss; 1 - alpha weighs the hard labels.")
    # -- optimization -------------------------------------------------------------------------------
    optimizer: str = option("adamw", "adamw, or muon for hidden matrices (AdamW for the rest).", choices=OPTIMIZERS)
    lr: float = option(3e-4, "Peak learning rate.")
    schedule: str = option("cosine", "Learning-rate schedule after warmup.", choices=SCHEDULES)
    warmup_steps: int = option(20, "Linear warmup steps.")
    min_lr_ratio: float = option(0.1, "Final learning rate as a fraction of --lr (cosine, linear, wsd).")
    decay_fraction: float = option(0.2, "wsd: fraction of the steps spent decaying at the end.")
    weight_decay: float = option(0.01, "Decoupled weight decay on matrices.")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.999, "AdamW beta2.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 disables.")
    micro_batch: int = option(16, "Examples (classify, sft) or windows (clm, mlm) per forward pass.")
    accumulation: int = option(1, "Micro-batches per optimizer step on each process.")
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the hardware supports it).",
                            choices=("auto", "bf16", "fp32"))
    compile: bool = option(False, "Compile the model with torch.compile.")
    seed: int = option(0, "Seed of initialization, validation split, data order, masking and augmentation.")
    mask_prob: float = option(0.15, "mlm: share of tokens chosen for prediction.")
    # -- when to stop, evaluate and save ---------------------------------------------------------------
    epochs: float = option(3.0, "Passes over the training data (ignored when --max-steps is given).")
    max_steps: int = option(0, "Stop after this many optimizer steps (0: use --epochs).")
    max_time: str = option("", "Stop after this much training time, e.g. 10m (empty: no limit).")
    eval_every: int = option(50, "Validate every N steps (0: never).")
    eval_batches: int = option(0, "Validation micro-batches per evaluation (0: the whole split).")
    metric: str = option("auto", "Validation metric for the best checkpoint and early stopping; auto: accuracy "
                         "for classify, loss otherwise.", choices=METRICS)
    patience: int = option(0, "Stop after this many evaluations without improvement (0: never).")
    final: str = option("best", "What final/ holds: the best checkpoint's weights by --metric, or the last.",
                        choices=("best", "last"))
    checkpoint_every: int = option(0, "Save a checkpoint every N steps (0: only the best and the final).")
    keep_last: int = option(2, "Keep the last K step checkpoints, plus the best.", affects_output=False)
    log_every: int = option(10, "Log training metrics every N steps.", affects_output=False)
    threads: int = option(0, "Torch intra-op threads per process (0: torch's default).", affects_output=False)
    find_lr: bool = option(False, "Run a learning-rate range test instead of training: print loss against "
                           "learning rate (and plot it to --out when matplotlib is present) and suggest --lr.",
                           affects_output=False)
    find_lr_steps: int = option(100, "--find-lr: steps from 1e-7 to 1.", affects_output=False)
    # -- run directory ----------------------------------------------------------------------------------
    resume: bool = option(False, "Continue the run in --out from its latest checkpoint.", affects_output=False)
    force: bool = option(False, "Delete an existing run in --out and start over.", affects_output=False)

    def __post_init__(self) -> None:
        problems = training_problems(self)
        if self.find_lr_steps < 3:
            problems.append("--find-lr-steps: must be at least 3 (a rate is suggested from the curve's shape)")
        if self.accumulation < 1:
            problems.append("--accumulation: must be at least 1")
        for name in ("lora_rank", "max_train_examples"):
            if getattr(self, name) < 0:
                problems.append(f"{flag_name(name)}: must not be negative")
        if self.epochs <= 0 and self.max_steps == 0:
            problems.append("--epochs, --max-steps: give a positive --epochs or --max-steps")
        for name in ("distill_alpha", "token_dropout", "lora_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"--val-fraction: must be between 0 and 1 (exclusive), got {self.val_fraction}")
        if self.token_dropout >= 1.0:
            problems.append("--token-dropout: must be below 1 (1 drops every token)")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            problems.append(f"--dropout: must be in [0, 1), got {self.dropout}")
        if self.temperature <= 0:
            problems.append(f"--temperature: must be positive, got {self.temperature}")
        if self.lora_alpha <= 0:
            problems.append(f"--lora-alpha: must be positive, got {self.lora_alpha}")
        if "{prompt}" not in self.template:
            problems.append("--template: must contain {prompt}, where the instruction goes")
        try:
            parse_freeze(self.freeze)
        except ValueError as exc:
            problems.append(f"--freeze: {exc}")
        overrides = [flag_name(n) for n in ("n_layer", "n_head", "d_model", "d_ff") if getattr(self, n) is not None]
        if overrides and not self.model:
            problems.append(f"{', '.join(overrides)}: shape a new model, so they need --model PRESET")
        if self.model and self.scratch:
            problems.append("--model and --scratch: --model already starts from random weights; drop --scratch")
        if self.lora_rank and self.freeze:
            problems.append("--lora-rank and --freeze: LoRA already freezes every base weight; drop --freeze")
        if self.lora_rank and (self.model or self.scratch):
            problems.append("--lora-rank: adapts pretrained weights; it does not fit --model or --scratch")
        if self.find_lr and self.resume:
            problems.append("--find-lr and --resume: the range test trains nothing to resume")
        validate(self, problems)

    def model_overrides(self) -> dict:
        return {name: getattr(self, name) for name in ("n_layer", "n_head", "d_model", "d_ff")
                if getattr(self, name) is not None}


FIELDS = {f.name for f in dataclasses.fields(FinetuneConfig)}
