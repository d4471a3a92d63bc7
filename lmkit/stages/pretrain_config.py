"""Configuration of ``lmkit pretrain``: every field is a flag and a key of ``--config``."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from lmkit.config import flag_name, option, validate
from lmkit.training.schedule import SCHEDULES

# The names lmkit.training.optim builds (a test keeps them equal): spelled here so that parsing
# flags and --help do not import torch.
OPTIMIZERS = ("adamw", "muon")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "10m", "1.5h"; "" means no limit (0)."""
    if not text:
        return 0.0
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 10m, 2h)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


def training_problems(config) -> list[str]:
    """The checks that every training stage's config (pretrain, finetune) shares: optimizer, schedule,
    masking, limits and the run directory's bookkeeping."""
    problems = []
    for name in ("micro_batch", "keep_last", "log_every"):
        if getattr(config, name) < 1:
            problems.append(f"{flag_name(name)}: must be at least 1")
    for name in ("seq_len", "warmup_steps", "max_steps", "eval_every", "eval_batches", "patience",
                 "checkpoint_every", "threads"):
        if getattr(config, name) < 0:
            problems.append(f"{flag_name(name)}: must not be negative")
    if config.lr <= 0:
        problems.append(f"--lr: must be positive, got {config.lr}")
    for name in ("min_lr_ratio", "decay_fraction", "mask_prob"):
        if not 0.0 <= getattr(config, name) <= 1.0:
            problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(config, name)}")
    for name in ("beta1", "beta2"):
        if not 0.0 <= getattr(config, name) < 1.0:
            problems.append(f"{flag_name(name)}: must be in [0, 1)")
    if config.weight_decay < 0 or config.grad_clip < 0:
        problems.append("--weight-decay and --grad-clip: must not be negative")
    try:
        parse_duration(config.max_time)
    except ValueError as exc:
        problems.append(f"--max-time: {exc}")
    if config.resume and config.force:
        problems.append("--resume and --force: choose one (continue the run, or start over)")
    return problems


@dataclass(kw_only=True)
class PretrainConfig:
    # -- what to train -----------------------------------------------------------------------
    dataset: str = option(help="Dataset artifact made by `lmkit preprocess`.", positional=True,
                          affects_output=False)  # its id, not its path, goes into the run's identity
    out: str = option(help="Run directory: step-XXXXXXXX/ and final/ checkpoints, metrics.jsonl.", short="-o",
                      affects_output=False)
    model: str = option("gpt-tiny", "Model preset (gpt-tiny, gpt-small, gpt2-124m, bert-tiny, bert-small, "
                        "bert-base, lstm-small); the flags below override its dimensions.")
    n_layer: int | None = option(None, "Override: number of blocks / LSTM layers.")
    n_head: int | None = option(None, "Override: attention heads.")
    d_model: int | None = option(None, "Override: model width.")
    d_ff: int | None = option(None, "Override: feed-forward width.")
    block_size: int | None = option(None, "Override: longest sequence the model supports.")
    dropout: float | None = option(None, "Override: dropout probability.")
    qk_norm: bool | None = option(None, "Override: RMSNorm on queries and keys (gpt, bert).")
    mlp: str | None = option(None, "Override: feed-forward type, swiglu or gelu (gpt, bert).", choices=("swiglu", "gelu"))
    objective: str = option("auto", "Training objective: clm (causal, for gpt/lstm), mlm (masked, for bert), or "
                            "auto (by architecture).", choices=("auto", "clm", "mlm"))
    init_from: str | None = option(None, "Start from this checkpoint's weights (not its optimizer or step).",
                                   affects_output=False)  # by id, like the dataset
    # -- batch -------------------------------------------------------------------------------------
    seq_len: int = option(0, "Tokens per training window; 0 means min(block size, 256).")
    micro_batch: int = option(8, "Windows per forward pass on each process.")
    batch_tokens: int = option(0, "Tokens per optimizer step over all processes; gradients accumulate over "
                               "micro-batches to reach it. 0 means one micro-batch per process.")
    # -- optimization ---------------------------------------------------------------------------
    optimizer: str = option("adamw", "adamw, or muon for hidden matrices (AdamW for the rest).", choices=OPTIMIZERS)
    lr: float = option(1e-3, "Peak learning rate.")
    schedule: str = option("cosine", "Learning-rate schedule after warmup.", choices=SCHEDULES)
    warmup_steps: int = option(50, "Linear warmup steps.")
    min_lr_ratio: float = option(0.1, "Final learning rate as a fraction of --lr (cosine, linear, wsd).")
    decay_fraction: float = option(0.2, "wsd: fraction of the steps spent decaying at the end.")
    weight_decay: float = option(0.1, "Decoupled weight decay on matrices (not on norms or biases).")
    beta1: float = option(0.9, "AdamW beta1.")
    beta2: float = option(0.95, "AdamW beta2.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 disables.")
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the hardware supports it).",
                            choices=("auto", "bf16", "fp32"))
    compile: bool = option(False, "Compile the model with torch.compile.")
    seed: int = option(0, "Seed of initialization, data order and masking.")
    mask_prob: float = option(0.15, "mlm: share of tokens chosen for prediction.")
    mask_replace: float = option(0.8, "mlm: of the chosen, share replaced by [MASK].")
    mask_random: float = option(0.1, "mlm: of the chosen, share replaced by a random token (the rest stay).")
    # -- when to stop, evaluate and save ---------------------------------------------------------
    max_steps: int = option(500, "Stop after this many optimizer steps (0: no step limit).")
    max_tokens: int = option(0, "Stop after this many training tokens (0: no limit).")
    max_time: str = option("", "Stop after this much training time, e.g. 30m (empty: no limit).")
    eval_every: int = option(100, "Validate every N steps (0: never).")
    eval_batches: int = option(20, "Validation micro-batches per evaluation (0: the whole split).")
    patience: int = option(0, "Stop after this many evaluations without improvement (0: never).")
    checkpoint_every: int = option(200, "Save a checkpoint every N steps (0: only the best and the final).")
    keep_last: int = option(2, "Keep the last K step checkpoints, plus the best.", affects_output=False)
    log_every: int = option(10, "Log training metrics every N steps.", affects_output=False)
    peak_tflops: float = option(0.0, "Peak TFLOP/s of one device in the training precision, to show MFU "
                                "(0: unknown, not shown).", affects_output=False)
    threads: int = option(0, "Torch intra-op threads per process (0: torch's default).", affects_output=False)
    # -- run directory ---------------------------------------------------------------------------
    resume: bool = option(False, "Continue the run in --out from its latest checkpoint.", affects_output=False)
    shard: bool = option(False, "Shard parameters across processes with FSDP2 (fully_shard).")
    force: bool = option(False, "Delete an existing run in --out and start over.", affects_output=False)

    def __post_init__(self) -> None:
        problems = training_problems(self)
        for name in ("batch_tokens", "max_tokens"):
            if getattr(self, name) < 0:
                problems.append(f"{flag_name(name)}: must not be negative")
        for name in ("mask_replace", "mask_random"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(self, name)}")
        if self.mask_replace + self.mask_random > 1.0:
            problems.append("--mask-replace + --mask-random: must not exceed 1")
        if self.max_steps == 0 and self.max_tokens == 0 and not self.max_time:
            problems.append("--max-steps, --max-tokens, --max-time: give at least one limit")
        if self.max_time and not self.max_steps and not self.max_tokens and self.schedule != "constant":
            problems.append(f"--schedule {self.schedule}: decays over a known number of steps; with only "
                            "--max-time use --schedule constant, or give --max-steps")
        if self.mask_prob <= 0:
            problems.append("--mask-prob: must be positive (masked LM learns from the chosen tokens)")
        if self.resume and self.init_from:
            problems.append("--resume and --init-from: a resumed run already has its weights; drop --init-from")
        validate(self, problems)

    def model_overrides(self) -> dict:
        return {name: getattr(self, name) for name in ("n_layer", "n_head", "d_model", "d_ff", "block_size",
                                                        "dropout", "qk_norm", "mlp")
                if getattr(self, name) is not None}


FIELDS = {f.name for f in dataclasses.fields(PretrainConfig)}
