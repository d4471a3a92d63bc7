"""The options every training stage shares (pretrain, finetune, and the next one), declared once.

A stage's config subclasses :class:`TrainingOptions`, adds its own fields and re-declares only
the defaults that differ (each re-declaration is visible in the stage's config file). ``SECTIONS``
orders ``--help`` and ``--print-config``, so shared and stage fields interleave by topic.

Batch size has one meaning everywhere: ``--micro-batch`` sequences per forward pass on each
process, ``--accumulation`` micro-batches per optimizer step on each process, or ``--batch-tokens``
for the whole step over all processes (sequences x ``--seq-len``), which keeps the optimizer step
the same when the number of processes changes. Give either; both must agree.

Run length: ``--max-steps``, ``--max-tokens`` and ``--max-time`` each stop a run. A stage's own
default length (500 steps for pretraining, ``--epochs`` for finetuning) applies only when none of
them is given, so a run bounded by time or tokens alone is bounded by exactly that.

Fields declared with ``resume=True`` fix a run's data order and model: a resumed run must keep them
(training.rundir refuses a change; the others, limits and rates, may change and are recorded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from lmkit.config import flag_name, option, validate
from lmkit.units import parse_duration

# The names lmkit.training.optim and lmkit.training.schedule build (tests keep them equal): spelled
# here so that parsing flags and --help do not import torch.
OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("auto", "cosine", "linear", "constant", "wsd")
PRECISIONS = ("auto", "bf16", "fp32")
# The backends lmkit.training.tracking sends a run to (--track).
TRACKERS = ("mlflow", "wandb", "tensorboard")
# --compile auto: a run this long pays for its compile even from a cold cache. Measured on 2 CPU cores
# (benchmarks/pretrain.py): gpt-small's compile costs 27 s cold and 3.5 s warm and saves 144 ms a step
# (break-even at 181 steps cold, 21 warm); gpt-tiny's costs 10 s cold and saves 18 ms a step (550 cold, 130 warm).
COMPILE_AUTO_STEPS = 500
COMPILE_AUTO_MINUTES = 10

BATCH, OPTIMIZATION, MASKING, STOPPING, RUN = ("batch", "optimization", "masked LM",
                                                "when to stop, evaluate and save", "run directory")


@dataclass(kw_only=True)
class TrainingOptions:
    """Fields and checks of every training stage; subclasses add ``SECTIONS`` before and after these."""

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "data", BATCH, OPTIMIZATION, MASKING, STOPPING, RUN)

    out: str = option(help="Run directory: step-XXXXXXXX/ and final/ checkpoints, metrics.jsonl, config.toml.",
                      short="-o", affects_output=False)
    # -- batch -------------------------------------------------------------------------------------
    seq_len: int = option(0, "Tokens per training window (the longest sequence, for examples); 0 means "
                          "min(block size, 256).", section=BATCH, resume=True)
    micro_batch: int = option(8, "Sequences per forward pass on each process.", section=BATCH, resume=True)
    accumulation: int = option(0, "Micro-batches per optimizer step on each process (gradient accumulation); "
                               "0: what --batch-tokens asks for, else 1.", section=BATCH, resume=True)
    batch_tokens: int = option(0, "Tokens per optimizer step over all processes (sequences x --seq-len); "
                               "gradients accumulate over micro-batches to reach it. 0: --accumulation decides.",
                               section=BATCH, resume=True)
    # -- optimization ------------------------------------------------------------------------------
    optimizer: str = option("adamw", "adamw, or muon for hidden matrices (AdamW for the rest; torch 2.9+).",
                            choices=OPTIMIZERS, section=OPTIMIZATION, resume=True)
    lr: float = option(1e-3, "Peak learning rate.", section=OPTIMIZATION)
    schedule: str = option("auto", "Learning-rate schedule after warmup; auto: cosine, or constant when only "
                           "--max-time bounds the run (its length in steps is unknown).", choices=SCHEDULES,
                           section=OPTIMIZATION)
    warmup_steps: int = option(50, "Linear warmup steps (at most half of the run's steps, when they are known).",
                               section=OPTIMIZATION)
    min_lr_ratio: float = option(0.1, "Final learning rate as a fraction of --lr (cosine, linear, wsd).",
                                 section=OPTIMIZATION)
    decay_fraction: float = option(0.2, "wsd: fraction of the steps spent decaying at the end.", section=OPTIMIZATION)
    weight_decay: float = option(0.1, "Decoupled weight decay on matrices (not on norms or biases).",
                                 section=OPTIMIZATION)
    beta1: float = option(0.9, "AdamW beta1.", section=OPTIMIZATION)
    beta2: float = option(0.95, "AdamW beta2.", section=OPTIMIZATION)
    grad_clip: float = option(1.0, "Clip the global gradient norm to this; 0 disables.", section=OPTIMIZATION)
    precision: str = option("auto", "bf16 autocast, fp32, or auto (bf16 where the hardware computes it natively).",
                            choices=PRECISIONS, section=OPTIMIZATION)
    compile: bool | None = option(None, "Compile the model with torch.compile: faster steps after a one-time "
                                  "compile (10-60 s, cached by torch for later runs of the same shapes). Unset: "
                                  f"auto, on for runs of {COMPILE_AUTO_STEPS}+ steps (--max-steps or --max-tokens) "
                                  f"or {COMPILE_AUTO_MINUTES}+ minutes of an objective whose batches keep one shape "
                                  "(clm, mlm), not for LSTMs or --shard, where torch can compile (a C++ compiler "
                                  "and Python's headers on CPU, Triton on CUDA).", affects_output=False,
                                  section=OPTIMIZATION)
    seed: int = option(0, "Seed of initialization, data order, masking and augmentation.", section=OPTIMIZATION,
                       resume=True)
    # -- masked LM ---------------------------------------------------------------------------------
    mask_prob: float = option(0.15, "mlm: share of tokens chosen for prediction.", section=MASKING)
    mask_replace: float = option(0.8, "mlm: of the chosen, share replaced by [MASK].", section=MASKING)
    mask_random: float = option(0.1, "mlm: of the chosen, share replaced by a random token (the rest stay).",
                                section=MASKING)
    # -- when to stop, evaluate and save -----------------------------------------------------------
    max_steps: int | None = option(None, "Stop after this many optimizer steps (0: no step limit); unset: the "
                                   "stage's default length, unless --max-tokens or --max-time bounds the run.",
                                   section=STOPPING)
    max_tokens: int = option(0, "Stop after this many training tokens (0: no limit).", section=STOPPING)
    max_time: str = option("", "Stop after this much training time, e.g. 30m (empty: no limit).", section=STOPPING)
    eval_every: int = option(100, "Validate every N steps (0: never).", section=STOPPING)
    eval_batches: int = option(20, "Validation micro-batches per evaluation (0: the whole split).", section=STOPPING)
    patience: int = option(0, "Stop after this many evaluations without improvement (0: never).", section=STOPPING)
    checkpoint_every: int = option(200, "Save a checkpoint every N steps (0: only the best and the final).",
                                   section=STOPPING)
    keep_last: int = option(2, "Keep the last K step checkpoints, plus the best.", affects_output=False,
                            section=STOPPING)
    log_every: int = option(10, "Log training metrics every N steps.", affects_output=False, section=STOPPING)
    peak_tflops: float = option(0.0, "Peak TFLOP/s of one device in the training precision, for MFU (0: known "
                                "GPUs' datasheet figure, else measured once with a matmul probe and cached).",
                                affects_output=False, section=STOPPING)
    threads: int = option(0, "Torch intra-op threads per process (0: OMP_NUM_THREADS if set, else the CPUs this "
                          "process may use, its affinity and any cgroup quota, divided among torchrun's processes "
                          "on this machine).", affects_output=False,
                          section=STOPPING)
    # -- run directory -----------------------------------------------------------------------------
    resume: bool = option(False, "Continue the run in --out from its latest checkpoint (an error if it has none).",
                          affects_output=False, section=RUN)
    auto_resume: bool = option(False, "Continue the run in --out if it has a checkpoint, else start it: one "
                               "command line for every launch of a preemptible job.", affects_output=False,
                               section=RUN)
    force: bool = option(False, "Delete an existing run in --out and start over.", affects_output=False, section=RUN)
    track: list[str] = option([], "Send the run to experiment trackers (repeatable or comma-separated; needs the "
                              "track extra): its config, every metric of metrics.jsonl with its step, the final "
                              "manifest, plot and lineage. mlflow: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME; "
                              "wandb: WANDB_PROJECT, WANDB_MODE; tensorboard: event files in RUN/tensorboard. A "
                              "resumed run continues the same tracking run.", choices=TRACKERS,
                              affects_output=False, section=RUN)

    def __post_init__(self) -> None:
        validate(self, self.problems())

    def problems(self) -> list[str]:
        """Every problem of these settings; a stage's config extends the list with its own checks."""
        problems = []
        for name in ("micro_batch", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{flag_name(name)}: must be at least 1")
        for name in ("seq_len", "accumulation", "batch_tokens", "warmup_steps", "max_tokens", "eval_every",
                     "eval_batches", "patience", "checkpoint_every", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 0:  # (None: a stage's auto)
                problems.append(f"{flag_name(name)}: must not be negative")
        if self.max_steps is not None and self.max_steps < 0:
            problems.append("--max-steps: must not be negative")
        if self.lr is not None and self.lr <= 0:
            problems.append(f"--lr: must be positive, got {self.lr}")
        for name in ("min_lr_ratio", "decay_fraction", "mask_prob", "mask_replace", "mask_random"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1], got {getattr(self, name)}")
        if self.mask_replace + self.mask_random > 1.0:
            problems.append("--mask-replace + --mask-random: must not exceed 1")
        if self.mask_prob <= 0:
            problems.append("--mask-prob: must be positive (masked LM learns from the chosen tokens)")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{flag_name(name)}: must be in [0, 1)")
        if self.weight_decay < 0 or self.grad_clip < 0:
            problems.append("--weight-decay and --grad-clip: must not be negative")
        try:
            parse_duration(self.max_time)
        except ValueError as exc:
            problems.append(f"--max-time: {exc}")
        if self.max_steps == 0 and not self.max_tokens and not self.max_time and not self.other_length_given():
            problems.append("--max-steps, --max-tokens, --max-time: give at least one limit (--max-steps 0 has no "
                            "step limit)")
        if self.time_bound_only and self.schedule not in ("auto", "constant"):
            problems.append(f"--schedule {self.schedule}: decays over a known number of steps; with only "
                            "--max-time use --schedule constant (or auto), or give --max-steps or --max-tokens")
        chosen = [flag for flag, on in (("--resume", self.resume), ("--auto-resume", self.auto_resume),
                                        ("--force", self.force)) if on]
        if len(chosen) > 1:
            problems.append(f"{' and '.join(chosen)}: choose one (continue the run, continue it if it exists, "
                            "or start over)")
        return problems

    # -- what the settings mean, resolved once for every stage ---------------------------------------

    def other_length_given(self) -> bool:
        """Whether a stage's own length setting bounds the run (finetune's --epochs)."""
        return False

    @property
    def given_length(self) -> bool:
        """Whether the user bounded the run (steps, tokens or time), so the stage's default length is off."""
        return self.max_steps is not None or bool(self.max_tokens) or bool(self.max_time)

    @property
    def time_bound_only(self) -> bool:
        return bool(self.max_time) and not self.max_steps and not self.max_tokens and not self.other_length_given()

    @property
    def max_seconds(self) -> float:
        return parse_duration(self.max_time)

    @property
    def resuming(self) -> bool:
        """Whether a checkpoint in --out is to be continued (with --auto-resume: when there is one)."""
        return self.resume or self.auto_resume

    @classmethod
    def default(cls, name: str, value: Any, help: str | None = None, *, resume: bool | None = None) -> Any:
        """Re-declare shared option ``name`` in a stage's config with another default (its help, choices,
        section and resume marker stay the shared declaration's unless ``help`` or ``resume`` is given)."""
        shared = cls.__dataclass_fields__[name].metadata
        return option(value, help or shared["help"], choices=shared["choices"], affects_output=shared["affects_output"],
                      section=shared["section"], resume=shared["resume"] if resume is None else resume)

    @classmethod
    def kept_on_resume(cls, name: str) -> Any:
        """Re-declare shared option ``name`` as it is, but marked ``resume``: a resumed run of this stage keeps it."""
        return cls.default(name, cls.__dataclass_fields__[name].default, resume=True)

    def accumulation_steps(self, seq_len: int, world_size: int) -> int:
        """Micro-batches per optimizer step on each process, from --accumulation or --batch-tokens; the
        error names the flags to change."""
        per_micro = self.micro_batch * seq_len * world_size
        if not self.batch_tokens:
            return self.accumulation or 1
        if self.batch_tokens % per_micro:
            raise ValueError(f"--batch-tokens {self.batch_tokens} is not a multiple of --micro-batch x --seq-len x "
                             f"processes = {self.micro_batch} x {seq_len} x {world_size} = {per_micro}")
        steps = self.batch_tokens // per_micro
        if self.accumulation and self.accumulation != steps:
            raise ValueError(f"--accumulation {self.accumulation} and --batch-tokens {self.batch_tokens}: disagree "
                             f"({self.batch_tokens} tokens are {steps} micro-batches of {per_micro} tokens); "
                             "give one of them")
        return steps

    def schedule_name(self) -> str:
        if self.schedule != "auto":
            return self.schedule
        return "constant" if self.time_bound_only else "cosine"

    def step_limit(self, default_steps: int) -> int:
        """The run's step limit: --max-steps, else ``default_steps`` when no other limit is given, else none (0)."""
        if self.max_steps is not None:
            return self.max_steps
        return 0 if self.given_length else default_steps

    def schedule_steps(self, max_steps: int, tokens_per_step: float) -> int:
        """The length decaying schedules decay over: the step limit, or the token limit in steps."""
        if max_steps:
            return max_steps
        if self.max_tokens:
            return math.ceil(self.max_tokens / max(tokens_per_step, 1))
        return 0
