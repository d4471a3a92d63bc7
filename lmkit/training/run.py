"""One run skeleton for every training stage: from a plan (what the stage decided before any
compute) to a committed final checkpoint.

A stage (pretrain, finetune, ...) reads and checks its inputs and returns a :class:`TrainingPlan`:
the objective to build, the model to start from, the run directory's state and recipe. This file
does the rest, the same way for every stage: the up-to-date check, building the objective and the
model, resuming, the optimizer, the run directory, checkpoints, the loop, the final save, the plot.
Every check on the inputs happens before the run directory is touched.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lmkit import __version__, artifacts
from lmkit import config as config_lib
from lmkit.checkpoint import TrainerState, read_checkpoint
from lmkit.devices import can_compile, keep_freed_memory, peak_flops, set_threads
from lmkit.errors import Interrupted, UserError
from lmkit.models import count_parameters, flops_per_token
from lmkit.models.config import ModelConfig
from lmkit.plotting import PLOT_FILE
from lmkit.progress import reporter
from lmkit.training import distributed, rundir, tracking
from lmkit.training.checkpoint import restore_training
from lmkit.training.loop import LoopSettings
from lmkit.training.loop import train as fit  # run.fit: the name tests patch to see a run's LoopSettings
from lmkit.training.objectives import OBJECTIVES, BatchLayout, Built, Objective, ObjectiveInputs, ObjectiveSpec
from lmkit.training.optim import Optimizers, build_optimizer
from lmkit.training.options import COMPILE_AUTO_MINUTES, COMPILE_AUTO_STEPS, TrainingOptions
from lmkit.training.precision import training_precision
from lmkit.training.rundir import FINAL, RunStart


@dataclass
class TrainingPlan:
    """What a training stage decided before any compute."""

    options: TrainingOptions
    env: distributed.Distributed
    spec: ObjectiveSpec
    inputs: ObjectiveInputs
    model_config: ModelConfig
    run_dir: Path
    start: RunStart
    parents: list[tuple[str, artifacts.Artifact]]
    new_model: Callable[[Built], nn.Module]     # the model to train, with the weights it starts from
    step_limit: Callable[[Objective], int]      # the run's step limit (0: none), once the data is known
    label: str                                  # names the run in messages, e.g. "gpt-tiny" or "finetune (sft)"
    stats: dict[str, Any] = field(default_factory=dict)  # what every checkpoint reports besides the common stats
    model_extra: dict[str, Any] = field(default_factory=dict)  # model.json additions besides the objective's (lora)
    metric: str = "val_loss"                    # picks the best checkpoint and drives --patience
    sharded: bool = False
    eval_at_end: bool = False                   # also validate after the last step (the best may be the last)
    finish: Callable[["Session"], Path] | None = None  # saves final/ (default: the model as trained)
    evaluations: Callable[[nn.Module], dict[str, float]] | None = None  # more validation figures (--eval-tasks)

    @property
    def layout(self):
        return self.inputs.layout


@dataclass
class Session:
    """A run under way: what the skeleton built, for a stage's ``finish`` (or its range test)."""

    plan: TrainingPlan
    built: Built
    objective: Objective                        # built.objective, wrapped for distillation when there is a teacher
    model: nn.Module
    optimizers: Optimizers
    precision: str
    state: TrainerState
    saver: rundir.CheckpointSaver | None = None
    precision_why: str = ""                     # how --precision was resolved, for the run's first line
    threads: str = ""                           # how many threads, and why

    def save_final(self, resumable: bool = True, extra: dict | None = None) -> Path:
        """Commit final/ with the model as it is now; not ``resumable``: without optimizer state (a merged
        LoRA model has no adapters left to continue)."""
        return self.saver.save(FINAL, self.model, self.optimizers if resumable else None, self.state, extra=extra)


def up_to_date(plan: TrainingPlan) -> artifacts.Artifact | None:
    """The final checkpoint when the run directory already holds this recipe's result (refreshed for Make)."""
    if rundir.up_to_date(plan.run_dir, plan.start.recipe):
        return rundir.existing_final(plan.run_dir)
    return None


def open_session(plan: TrainingPlan) -> Session:
    """Build the objective (reading the data), the model with its starting or resumed weights and the
    optimizer; the run directory is not touched yet."""
    options, env = plan.options, plan.env
    built = plan.spec.build(plan.inputs)
    objective = built.objective
    if objective.train_windows.count < plan.layout.global_batch:
        raise UserError(f"{plan.inputs.data}: {objective.train_windows.count:,} training {plan.spec.unit} of at most "
                        f"{plan.inputs.seq_len} tokens, fewer than one batch ({plan.layout.global_batch}); lower "
                        "--seq-len, --micro-batch, --accumulation or --batch-tokens, or add data")
    if (options.eval_every or options.patience) and not (objective.val_windows and objective.val_windows.count):
        reporter.warn(f"{plan.inputs.data}: no validation data; no evaluation, best checkpoint or early stopping "
                      "(make a validation split with --val-fraction)")
    threads = set_threads(options.threads)
    if env.device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(options.seed)
    model = plan.new_model(built).to(env.device)
    checkpoint = read_checkpoint(plan.start.resume_from) if plan.start.resume_from is not None else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint.build_model().state_dict())
    started_in = checkpoint.trainer_state().extra.get("precision") if checkpoint is not None else None
    precision, precision_why = training_precision(options.precision, model, objective, plan.layout.micro_batch, env,
                                                  started_in, plan.sharded)
    if plan.sharded:
        distributed.shard_model(model, env)  # after loading full weights, before the optimizer sees parameters
    if plan.inputs.teacher is not None:
        distill = OBJECTIVES["distill"]
        inputs = dataclasses.replace(plan.inputs, inner=objective, options=distill.options_from(options))
        objective = distill.build(inputs).objective
    optimizers = build_optimizer(model, options.optimizer, options.lr, options.weight_decay,
                                 (options.beta1, options.beta2))
    state = TrainerState(world_size=env.world_size)
    if checkpoint is not None:
        state = restore_training(checkpoint, optimizers, model, sharded=plan.sharded)
        reporter.info(f"resuming from {plan.start.resume_from} (step {state.step})")
    state.world_size, state.global_batch = plan.env.world_size, plan.layout.global_batch  # this launch's layout
    state.extra["launch"] = plan.start.launch
    state.extra["history"] = plan.start.history
    state.extra["precision"] = precision
    if plan.start.resumed_launch is not None:
        changed = rundir.changed_settings(plan.start.resumed_launch, plan.start.launch)
        if changed:
            described = ", ".join(f"{key} {value!r} -> {plan.start.launch.get(key)!r}"
                                  for key, value in changed.items())
            reporter.info(f"resumed with changed settings (recorded in the checkpoints' history): {described}")
    return Session(plan, built, objective, model, optimizers, precision, state, precision_why=precision_why,
                   threads=threads)


def run_training(plan: TrainingPlan) -> artifacts.Artifact:
    """Train as planned and commit final/; an up-to-date run does no work."""
    existing = up_to_date(plan)
    if existing is not None:
        if plan.env.is_main:
            finish_tracking(plan, existing)
        return existing
    tracking.check_installed(plan.options.track)
    session = open_session(plan)
    options, env, layout, objective = plan.options, plan.env, plan.layout, session.objective
    # Only now, with every input read and checked, is the run directory touched.
    rundir.prepare(plan.run_dir, options, env, fresh=plan.start.fresh)
    tracker: tracking.Tracking | None = None  # opened once the MFU probe is done (its thread would disturb it)

    max_steps = plan.step_limit(objective)
    tokens_per_step = layout.global_batch * objective.tokens_per_sample
    schedule_steps = options.schedule_steps(max_steps, tokens_per_step)
    warmup = min(options.warmup_steps, schedule_steps // 2) if schedule_steps else options.warmup_steps
    if warmup < options.warmup_steps:
        plan.inputs.notes.append(f"--warmup-steps {options.warmup_steps} lowered to {warmup}: half of the "
                                 f"{schedule_steps} steps")
    model = session.model
    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    flops = flops_per_token(plan.model_config, plan.inputs.seq_len)
    length = f"{max_steps:,} steps" if max_steps else (
        f"{schedule_steps:,} steps (--max-tokens)" if options.max_tokens else f"{options.max_time} (--max-time)")
    trainable = f" ({n_trainable:,} trainable, {n_trainable / n_params:.1%})" if n_trainable != n_params else ""
    compiled, why = compile_choice(options, plan, schedule_steps, env.device)
    reporter.info(f"{plan.label}: {plan.model_config.arch}, {n_params:,} parameters{trainable}, "
                  f"{flops / 1e6:,.1f} MFLOPs per token; objective {plan.spec.name}, {session.precision} "
                  f"({session.precision_why}), {'compiled' if compiled else 'eager'} ({why}); {session.threads}; "
                  f"{objective.train_windows.count:,} training {plan.spec.unit}; {length} of {layout.global_batch} x "
                  f"{plan.inputs.seq_len} tokens ({layout.accumulation} accumulation, {env.world_size} process(es)); "
                  f"schedule {options.schedule_name()}")
    for note in plan.inputs.notes:
        reporter.info(note)

    stats = {"parameters": n_params, "trainable_parameters": n_trainable, "flops_per_token": flops,
             "objective": plan.spec.name, "arch": plan.model_config.arch, "metric": plan.metric, **plan.stats}
    session.saver = rundir.CheckpointSaver(
        plan.run_dir, plan.start.recipe, options, plan.model_config, plan.spec.name, plan.inputs.tokenizer,
        plan.parents, stats, env, extra={**session.built.extra, **plan.model_extra} or None, sharded=plan.sharded)

    def save(tag: str, trainer_state: TrainerState, optimizer_state) -> Path:
        if tracker is not None:  # the tracking runs' ids: a resumed run continues them
            tracker.remember(trainer_state.extra)
        return session.saver.save(tag, model, optimizer_state, trainer_state)

    # Unset (finetuning's default): twice an epoch, so early stopping reads the validation curve per epoch.
    eval_every = (options.eval_every if options.eval_every is not None
                  else max(1, -(-objective.train_windows.count // (2 * layout.global_batch))))
    settings = LoopSettings(
        options, step_limit=max_steps, schedule_steps=schedule_steps, warmup_steps=warmup, eval_every=eval_every,
        precision=session.precision, compile=compiled, flops_per_token=flops, sharded=plan.sharded,
        # Rank 0 logs MFU; the probe runs there alone (ranks measuring at once would share the cores).
        peak_flops=options.peak_tflops * 1e12 or (_peak_flops(env, session.precision) if env.is_main else 0.0),
        metric=plan.metric, eval_at_end=plan.eval_at_end, evaluations=plan.evaluations)
    tracker = open_tracking(plan, session.state) if env.is_main else None
    try:
        session.state = fit(model, objective, session.optimizers, settings, layout, env, plan.run_dir, session.state,
                            save, last_checkpoint=plan.start.resume_from, tracker=tracker)
        if tracker is not None:
            tracker.remember(session.state.extra)
        final = plan.finish(session) if plan.finish is not None else session.save_final()
        rundir.write_plot(plan.run_dir, env)
    except BaseException as exc:
        if tracker is not None:  # a stop request (KILLED) or an error (FAILED): what was sent stays
            tracker.close("KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED")
        raise
    artifact = artifacts.load(final)
    if tracker is not None:
        close_tracking(tracker, plan, artifact)
    return artifact


def open_tracking(plan: TrainingPlan, state: TrainerState, names: list[str] | None = None
                  ) -> tracking.Tracking | None:
    """The run's trackers (--track, or ``names`` of them), reopening the tracking runs the checkpoint names; sends
    the resolved config (the stage's settings and the model's, as ``model.FIELD``) and the inputs' lineage."""
    info = tracking.RunInfo(plan.run_dir.resolve().name, plan.run_dir, state.step)
    names = plan.options.track if names is None else names
    kept = state.extra.get(tracking.STATE_KEY, {})
    tracker = tracking.start(names, info, {name: kept[name] for name in names if name in kept})
    if tracker is None:
        return None
    tracker.params({**config_lib.as_dict(plan.options),
                    **{f"model.{k}": v for k, v in plan.model_config.to_dict().items()}})
    tags = {"lmkit.version": __version__, "lmkit.stage": plan.label, "lmkit.objective": plan.spec.name,
            "lmkit.run_dir": str(plan.run_dir.resolve())}
    roles: dict[str, int] = {}
    for role, parent in plan.parents:  # the lineage: each input artifact's id and path
        roles[role] = roles.get(role, 0) + 1
        key = f"lmkit.input.{role}" + (f".{roles[role]}" if roles[role] > 1 else "")
        tags[f"{key}.id"], tags[f"{key}.path"] = parent.id, str(parent.path)
    tracker.tags(tags)
    return tracker


def close_tracking(tracker: tracking.Tracking, plan: TrainingPlan, final: artifacts.Artifact) -> None:
    """The final checkpoint's id as a tag, its manifest, the plot, config and metrics as files; then the end."""
    tracker.tags({"lmkit.checkpoint.id": final.id, "lmkit.checkpoint.path": str(final.path.resolve())})
    tracker.files([final.path / artifacts.MANIFEST, plan.run_dir / PLOT_FILE, plan.run_dir / "config.toml",
                   plan.run_dir / "metrics.jsonl"])
    rundir.mark_tracked(plan.run_dir, tracker.close("FINISHED"))


def finish_tracking(plan: TrainingPlan, final: artifacts.Artifact) -> None:
    """An up-to-date run's trackers that do not have its end: a launch stopped between committing final/ and its
    trackers' last send, or a --track added to a finished run. The tracking runs its checkpoint names are reopened
    (a new one otherwise), sent what metrics.jsonl holds beyond their last step, and closed."""
    if not plan.options.track:
        return
    done = rundir.tracked(plan.run_dir)
    missing = [name for name in dict.fromkeys(plan.options.track) if name not in done]
    if not missing:
        return
    tracking.check_installed(missing)
    reporter.info(f"{plan.run_dir} is up to date; sending its end to {', '.join(missing)}")
    tracker = open_tracking(plan, read_checkpoint(final.path).trainer_state(), missing)
    metrics = plan.run_dir / "metrics.jsonl"
    tracker.replay([json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
                   if metrics.exists() else [])
    close_tracking(tracker, plan, final)


def _peak_flops(env: distributed.Distributed, precision: str) -> float:
    """devices.peak_flops, its matmul probe's random matrices drawn off the run's RNG: otherwise a run that measures
    (a cold cache) trains with other dropout than one that finds the figure cached, and rank 0 with other dropout
    than the other ranks."""
    with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
        return peak_flops(env.device, precision)


def compile_choice(options: TrainingOptions, plan: TrainingPlan, steps: int, device: torch.device
                   ) -> tuple[bool, str]:
    """Whether to torch.compile the model, and why (for the run's first line). --compile and --no-compile
    decide; unset, a run compiles when the compile pays (options.COMPILE_AUTO_STEPS; ``steps``: the run's
    length in steps from --max-steps or --max-tokens, 0 when only time bounds it) and can work: batches of
    one shape (else each new shape compiles again), one process or DDP, an LSTM excluded (its recurrence is
    one fused kernel already), and a compiler present."""
    if options.compile is not None:
        return options.compile, "--compile" if options.compile else "--no-compile"
    minutes = options.max_seconds / 60
    long_enough = steps >= COMPILE_AUTO_STEPS or (not steps and minutes >= COMPILE_AUTO_MINUTES)
    if not long_enough:
        return False, f"auto: shorter than {COMPILE_AUTO_STEPS} steps or {COMPILE_AUTO_MINUTES} minutes"
    if not plan.spec.fixed_shapes or plan.model_config.arch == "lstm" or plan.sharded:
        what = ("an LSTM" if plan.model_config.arch == "lstm" else "sharded" if plan.sharded
                else f"{plan.spec.name} batches change shape")
        return False, f"auto: {what}"
    if not can_compile(device):
        return False, "auto: no " + ("Triton" if device.type == "cuda" else "C++ compiler") + " for torch.compile"
    return True, "auto: a long run; --no-compile to skip the compile"


def batch_layout(options: TrainingOptions, seq_len: int, env: distributed.Distributed) -> BatchLayout:
    """The micro-batch, accumulation and process layout of a step, or the error naming the flags."""
    try:
        accumulation = options.accumulation_steps(seq_len, env.world_size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return BatchLayout(options.micro_batch, accumulation, env.world_size)


def sequence_length(options: TrainingOptions, model_config: ModelConfig) -> int:
    """--seq-len, or min(block size, 256); refused when the model cannot read it."""
    seq_len = options.seq_len or min(model_config.block_size, 256)
    if seq_len > model_config.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block size {model_config.block_size} "
                        "(raise --block-size or lower --seq-len)")
    return seq_len
