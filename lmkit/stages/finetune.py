"""``lmkit finetune``: a pretrained checkpoint trained further on labeled data (classification),
instruction/response pairs (SFT) or domain text (continued clm/mlm), optionally with LoRA, frozen
layers or a distillation teacher. Same loop, checkpoints, resume and run directory as pretraining.

Every check on the inputs happens before any compute and before the run directory is touched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmkit import artifacts, config as config_lib
from lmkit.data.packing import EOS_ID, SEP_ID, MaskingSettings, load_stream
from lmkit.errors import UserError
from lmkit.models import count_parameters
from lmkit.models.classifier import DEFAULT_POOLING, POOLING, SequenceClassifier
from lmkit.models.config import ModelConfig
from lmkit.models.lora import apply_lora, merge_lora
from lmkit.models.presets import model_config
from lmkit.progress import reporter
from lmkit.stages import rundir
from lmkit.stages.finetune_config import FinetuneConfig, parse_freeze
from lmkit.stages.finetune_data import labeled_splits, read_instructions, split_off
from lmkit.stages.pretrain import resolve_precision
from lmkit.stages.pretrain_config import parse_duration
from lmkit.stages.rundir import FINAL
from lmkit.tokenizer import Tokenizer
from lmkit.training import distributed
from lmkit.training.checkpoint import Checkpoint, TrainerState, read_checkpoint, step_tag
from lmkit.training.loop import LoopSettings, fit
from lmkit.training.objectives import BatchLayout, CausalLM, MaskedLM
from lmkit.training.optim import build_optimizer
from lmkit.training.tasks import Classification, Distillation, InstructionTuning

# What fixes a run's data, model and order: a resumed run must keep them.
_RESUME_INVARIANTS = ("task", "seq_len", "micro_batch", "accumulation", "seed", "optimizer", "lora_rank", "lora_alpha",
                      "lora_dropout", "freeze", "pooling", "scratch", "model", "n_layer", "n_head", "d_model", "d_ff",
                      "dropout", "val_fraction", "max_train_examples", "template", "prompt_field", "response_field",
                      "token_dropout", "class_weights", "temperature", "distill_alpha", "mask_prob")
TASK_ARCHS = {"classify": ("gpt", "bert", "lstm"), "sft": ("gpt", "lstm"), "clm": ("gpt", "lstm"), "mlm": ("bert",)}


@dataclass
class FinetuneResult:
    """What ``lmkit finetune`` returns: the final checkpoint, or the range test's outcome."""

    checkpoint: artifacts.Artifact | None = None
    range_test: Any = None
    range_test_files: list[Path] = dataclasses.field(default_factory=list)
    comparison: dict[str, Any] | None = None   # distillation: teacher against student


def run(config: FinetuneConfig) -> FinetuneResult:
    env = distributed.setup()
    try:
        return _run(config, env)
    finally:
        distributed.teardown(env)


def _task(config: FinetuneConfig, base: Checkpoint, data: Path) -> str:
    if config.task != "auto":
        return config.task
    if data.is_file():
        return "sft"
    if (data / artifacts.MANIFEST).is_file():
        if "labels" in artifacts.read_manifest(data).get("stats", {}):
            return "classify"
        return "mlm" if base.model_config.arch == "bert" else "clm"
    raise UserError(f"{data}: neither a dataset artifact nor a JSONL file")


@dataclass
class _Plan:
    base: Checkpoint
    tokenizer: artifacts.Artifact
    task: str
    model_config: ModelConfig
    seq_len: int
    layout: BatchLayout
    objective: Any
    data_parent: tuple[str, artifacts.Artifact] | None
    head: dict | None
    template: str | None
    teacher: Checkpoint | None
    recipe: str
    run_dir: Path
    resume_from: Path | None
    notes: list[str]


def _plan(config: FinetuneConfig, env: distributed.Distributed) -> _Plan:
    base = read_checkpoint(config.base)
    if base.task == "classify":
        raise UserError(f"{config.base}: is a classifier checkpoint; finetune starts from a language model "
                        "(a pretrain or sft checkpoint)")
    tokenizer = artifacts.load(base.tokenizer_path, kind="tokenizer")
    data_path = Path(config.data)
    task = _task(config, base, data_path)
    model_cfg = base.model_config
    if config.model:
        model_cfg = model_config(config.model, base.model_config.vocab_size, **config.model_overrides())
    if config.dropout is not None:
        model_cfg = dataclasses.replace(model_cfg, dropout=config.dropout)
    if model_cfg.arch not in TASK_ARCHS[task]:
        what = f"--model {config.model}" if config.model else f"{config.base}"
        raise UserError(f"--task {task}: does not fit a {model_cfg.arch} model ({what}); {task} trains "
                        f"{', '.join(TASK_ARCHS[task])}")
    if task in ("sft", "clm") and base.objective not in ("clm", "sft") and not config.model:
        raise UserError(f"{config.base}: was trained with {base.objective}; --task {task} needs a causal model")
    _metric(config, task)  # refuse a classification metric for another task before reading any data
    freeze_embeddings, freeze_layers = parse_freeze(config.freeze)
    if freeze_layers and (model_cfg.arch == "lstm" or freeze_layers > model_cfg.n_layer):
        raise UserError(f"--freeze layers:{freeze_layers}: the model has "
                        f"{'no separate blocks (LSTM)' if model_cfg.arch == 'lstm' else f'{model_cfg.n_layer} blocks'}")
    if config.lora_rank and model_cfg.arch == "lstm":
        raise UserError("--lora-rank: an LSTM has no attention or MLP projections to adapt")
    seq_len = config.seq_len or min(model_cfg.block_size, 256)
    if seq_len > model_cfg.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block size {model_cfg.block_size}")
    layout = BatchLayout(config.micro_batch, config.accumulation, env.world_size)
    teacher = _teacher(config, tokenizer, task, seq_len) if config.teacher else None
    notes: list[str] = []
    head = template = None
    data_parent = None
    identity: dict[str, Any] = {**config_lib.identity_dict(config), "base": base.artifact.id}
    if task == "classify":
        dataset = _dataset(data_path, tokenizer, config.base)
        train, validation, names, made = labeled_splits(dataset, config.val_fraction, config.seed)
        if made:
            notes.append(f"validation: {len(validation.tokens)} examples held out of train (--val-fraction "
                         f"{config.val_fraction}, stratified)")
        chosen = _subset(len(train.tokens), config, notes)
        if chosen is not None:
            train = type(train)([train.tokens[i] for i in chosen], train.labels[chosen])
        pooling = DEFAULT_POOLING[model_cfg.arch] if config.pooling == "auto" else config.pooling
        if pooling not in POOLING[model_cfg.arch]:
            raise UserError(f"--pooling {pooling}: does not fit a {model_cfg.arch} model "
                            f"(choose {', '.join(POOLING[model_cfg.arch])})")
        if teacher is not None and teacher.labels != names:
            raise UserError(f"--teacher {config.teacher}: its labels {teacher.labels} differ from the dataset's {names}")
        weights = None
        if config.class_weights == "balanced":  # n / (k * n_c), as scikit-learn's "balanced"
            counts = np.bincount(train.labels, minlength=len(names)).astype(np.float64)
            weights = torch.tensor(np.where(counts > 0, len(train.labels) / (len(names) * np.maximum(counts, 1)), 0.0),
                                   dtype=torch.float32)
        objective = Classification(train.tokens, train.labels, validation.tokens, validation.labels, len(names),
                                   model_cfg.arch, seq_len, layout, config.seed, env.device, weights,
                                   config.token_dropout, teacher.model_config.arch if teacher else None)
        head = {"labels": names, "pooling": pooling, "max_len": seq_len}
        data_parent = ("dataset", dataset)
        identity["data"] = dataset.id
    elif task == "sft":
        examples, cut = read_instructions(data_path, Tokenizer.from_artifact(tokenizer.path), config.template,
                                          config.prompt_field, config.response_field, seq_len + 1)
        if cut:
            notes.append(f"{cut} of {len(examples)} responses were cut to fit --seq-len {seq_len}")
        train, validation = split_off(examples, config.val_fraction, config.seed)
        chosen = _subset(len(train), config, notes)
        if chosen is not None:
            train = [train[i] for i in chosen]
        notes.append(f"validation: {len(validation)} of {len(examples)} records held out (--val-fraction "
                     f"{config.val_fraction})")
        objective = InstructionTuning(train, validation, layout, config.seed, env.device)
        template = config.template
        identity["data"] = artifacts.describe_file(data_path)["sha256"]
    else:
        dataset = _dataset(data_path, tokenizer, config.base)
        separator = SEP_ID if task == "mlm" else EOS_ID
        train_stream = load_stream(dataset, "train", separator)
        info = dataset.stats["splits"].get("validation")
        val_stream = load_stream(dataset, "validation", separator) if info and info["documents"] else None
        if task == "clm":
            objective = CausalLM(train_stream, val_stream, seq_len, layout, config.seed, env.device)
        else:
            objective = MaskedLM(train_stream, val_stream, seq_len, layout, config.seed, env.device,
                                 model_cfg.vocab_size, MaskingSettings(config.mask_prob))
        data_parent = ("dataset", dataset)
        identity["data"] = dataset.id
    if objective.train_windows.count < layout.global_batch:
        raise UserError(f"{config.data}: {objective.train_windows.count} training examples, fewer than one batch "
                        f"({layout.global_batch}); lower --micro-batch or add data")
    if teacher is not None:
        identity["teacher"] = teacher.artifact.id
    recipe = artifacts.make_recipe("checkpoint", identity, [], [])
    run_dir = Path(config.out)
    # A LoRA run's merged final/ holds no adapters (nor their optimizer state): resume from a step checkpoint.
    resumable = (lambda path: path.name != FINAL) if config.lora_rank and config.lora_merge else (lambda path: True)
    resume_from = rundir.inspect_run_dir(run_dir, config, recipe, env, model_cfg, _RESUME_INVARIANTS, resumable)
    return _Plan(base, tokenizer, task, model_cfg, seq_len, layout, objective, data_parent, head, template, teacher,
                 recipe, run_dir, resume_from, notes)


def _subset(count: int, config: FinetuneConfig, notes: list[str]) -> np.ndarray | None:
    """--max-train-examples: a seeded random subset of the training examples (indices, in order)."""
    if not config.max_train_examples or config.max_train_examples >= count:
        return None
    notes.append(f"training on {config.max_train_examples} of {count} examples (--max-train-examples)")
    return np.sort(np.random.default_rng([config.seed, 2]).permutation(count)[:config.max_train_examples])


def _dataset(path: Path, tokenizer: artifacts.Artifact, base: str) -> artifacts.Artifact:
    dataset = artifacts.load(path, kind="dataset")
    theirs = artifacts.load(dataset.path / "tokenizer", kind="tokenizer")
    if theirs.id != tokenizer.id:
        raise UserError(f"{path}: was tokenized with another tokenizer than {base}'s; re-run lmkit preprocess "
                        f"with --tokenizer {Path(base) / 'tokenizer'}")
    return dataset


def _teacher(config: FinetuneConfig, tokenizer: artifacts.Artifact, task: str, seq_len: int) -> Checkpoint:
    teacher = read_checkpoint(config.teacher)
    if teacher.model_config.block_size < seq_len:
        raise UserError(f"--teacher {config.teacher}: its block size {teacher.model_config.block_size} is below "
                        f"--seq-len {seq_len}; lower --seq-len")
    if artifacts.load(teacher.tokenizer_path, kind="tokenizer").id != tokenizer.id:
        raise UserError(f"--teacher {config.teacher}: its tokenizer differs from {config.base}'s; a teacher's soft "
                        "targets are over the same tokens (or labels) as the student's")
    wanted = {"classify": ("classify",), "sft": ("lm", "sft"), "clm": ("lm", "sft"), "mlm": ("lm",)}[task]
    if teacher.task not in wanted or (task != "classify" and teacher.objective == "mlm") != (task == "mlm"):
        raise UserError(f"--teacher {config.teacher}: a {teacher.task} checkpoint ({teacher.objective}) cannot teach "
                        f"--task {task}")
    return teacher


def _build(plan: _Plan, config: FinetuneConfig) -> torch.nn.Module:
    """The model to train, with the base's weights unless --scratch or --model; LoRA and freezing applied."""
    fresh = config.scratch or bool(config.model)
    if plan.task == "classify":
        model = SequenceClassifier(plan.model_config, len(plan.head["labels"]), plan.head["pooling"])
        body = model.backbone
    else:
        from lmkit.models import build_model

        model = body = build_model(plan.model_config)
    if not fresh:
        source = plan.base.inference_model()
        missing, _ = body.load_state_dict(source.state_dict(), strict=False)  # a classifier has no LM head
        if missing:
            raise UserError(f"{config.base}: its weights lack {missing[:3]} for this model")
    if config.lora_rank:
        apply_lora(body, config.lora_rank, config.lora_alpha, config.lora_dropout)
        if plan.task == "classify":
            model.head.requires_grad_(True)  # the new head is trained in full
    embeddings, layers = parse_freeze(config.freeze)
    if embeddings:
        body.tok_emb.requires_grad_(False)  # tied: the output projection too
    for block in list(getattr(body, "blocks", []))[:layers]:
        block.requires_grad_(False)
    return model


def _run(config: FinetuneConfig, env: distributed.Distributed) -> FinetuneResult:
    plan = _plan(config, env)
    if plan.resume_from is None and not config.find_lr and rundir.up_to_date(plan.run_dir, plan.recipe):
        return FinetuneResult(checkpoint=rundir.existing_final(plan.run_dir))
    if config.threads:
        torch.set_num_threads(config.threads)
    precision = resolve_precision(config.precision, env.device)
    torch.manual_seed(config.seed)
    model = _build(plan, config).to(env.device)
    if plan.resume_from is not None:
        model.load_state_dict(read_checkpoint(plan.resume_from).build_model().state_dict())
    objective = plan.objective
    teacher_model = None
    if plan.teacher is not None:
        teacher_model = plan.teacher.inference_model().to(env.device)
        objective = Distillation(objective, teacher_model, config.temperature, config.distill_alpha)
    optimizers = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, (config.beta1, config.beta2))
    if config.find_lr:
        return _find_lr(config, plan, model, objective, optimizers, precision, env)
    state = TrainerState(world_size=env.world_size)
    if plan.resume_from is not None:
        state = read_checkpoint(plan.resume_from).restore_training(optimizers)
        reporter.info(f"resuming from {plan.resume_from} (step {state.step})")
    rundir.prepare(plan.run_dir, config, env, fresh=plan.resume_from is None)

    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    steps = config.max_steps or math.ceil(config.epochs * plan.objective.train_windows.count / plan.layout.global_batch)
    warmup = min(config.warmup_steps, steps // 2)
    if warmup < config.warmup_steps:
        plan.notes.append(f"--warmup-steps {config.warmup_steps} lowered to {warmup}: half of the {steps} steps")
    reporter.info(f"finetune ({plan.task}): {plan.model_config.arch}, {n_params:,} parameters, {n_trainable:,} "
                  f"trainable ({n_trainable / n_params:.1%}); {plan.objective.train_windows.count:,} training "
                  f"examples, {steps} steps of {plan.layout.global_batch}; {precision}")
    for note in plan.notes:
        reporter.info(note)
    metric = _metric(config, plan.task)
    lora = ({"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout}
            if config.lora_rank else None)
    extra = {key: value for key, value in (("head", plan.head), ("template", plan.template), ("lora", lora))
             if value is not None}
    parents = [("base", plan.base.artifact)] + ([plan.data_parent] if plan.data_parent else [])
    if plan.teacher is not None:
        parents.append(("teacher", plan.teacher.artifact))
    saver = rundir.CheckpointSaver(
        plan.run_dir, plan.recipe, config, plan.model_config, plan.task, plan.tokenizer, parents,
        {"parameters": n_params, "trainable_parameters": n_trainable, "objective": plan.task, "task": plan.task,
         "arch": plan.model_config.arch, "metric": metric}, env, extra=extra, best_key="best_metric")

    def save(tag: str, trainer_state: TrainerState, optimizer_state) -> Path:
        return saver.save(tag, model, optimizer_state, trainer_state)

    settings = LoopSettings(
        lr=config.lr, schedule=config.schedule, warmup_steps=warmup,
        min_lr_ratio=config.min_lr_ratio, decay_fraction=config.decay_fraction, grad_clip=config.grad_clip,
        max_steps=steps, schedule_steps=steps, max_tokens=0, max_seconds=parse_duration(config.max_time),
        eval_every=config.eval_every, eval_batches=config.eval_batches, patience=config.patience,
        checkpoint_every=config.checkpoint_every, log_every=config.log_every, precision=precision,
        compile=config.compile, flops_per_token=0.0, peak_flops=0.0, metric=metric, maximize=metric != "val_loss",
        eval_at_end=True)
    state = fit(model, objective, optimizers, settings, plan.layout, env, plan.run_dir, state, save,
                last_checkpoint=plan.resume_from)
    if config.final == "best" and state.best_step is not None and state.best_step != state.step:
        best = read_checkpoint(plan.run_dir / step_tag(state.best_step))
        model.load_state_dict(best.build_model().state_dict())
        reporter.info(f"final/ holds the best weights (step {state.best_step}, {metric} {state.best_metric:.4f})")
    comparison = None
    if teacher_model is not None:
        comparison = _compare(plan, model, teacher_model, plan.objective, config)
        saver.stats["distillation"] = comparison  # in final/'s manifest, for reports and Make
    if lora and config.lora_merge:
        merge_lora(model)
        final = saver.save(FINAL, model, None, state, extra={k: v for k, v in extra.items() if k != "lora"})
    else:
        final = saver.save(FINAL, model, optimizers, state)
    rundir.write_plot(plan.run_dir, env)
    return FinetuneResult(checkpoint=artifacts.load(final), comparison=comparison)


def _metric(config: FinetuneConfig, task: str) -> str:
    name = config.metric
    if name == "auto":
        name = "accuracy" if task == "classify" else "loss"
    if name in ("accuracy", "f1") and task != "classify":
        raise UserError(f"--metric {name}: is a classification metric; --task {task} validates on loss")
    return f"val_{name}"


@torch.no_grad()
def _compare(plan: _Plan, student: torch.nn.Module, teacher: torch.nn.Module, objective, config) -> dict[str, Any]:
    """Teacher against student on the validation data: parameters, metric, forward speed."""
    rows = {}
    for name, model in (("teacher", teacher), ("student", student)):
        model.eval()
        started = time.perf_counter()
        framing = {"arch": plan.teacher.model_config.arch} if name == "teacher" and plan.task == "classify" else {}
        metrics = objective.evaluate(model, 0, **framing)
        seconds = time.perf_counter() - started
        examples = objective.val_windows.count if objective.val_windows else 0
        rows[name] = {"parameters": count_parameters(model), **metrics,
                      "examples_per_s": examples / seconds if seconds > 0 else 0.0}
    model_metric = _metric(config, plan.task)
    reporter.info("distillation: " + "; ".join(
        f"{name} {row['parameters']:,} parameters, {model_metric} {row.get(model_metric, float('nan')):.4f}, "
        f"{row['examples_per_s']:,.0f} examples/s" for name, row in rows.items()))
    return rows


def _find_lr(config: FinetuneConfig, plan: _Plan, model, objective, optimizers, precision: str,
             env: distributed.Distributed) -> FinetuneResult:
    from lmkit.training.lr_find import lr_range_test

    try:
        result = lr_range_test(model, objective, optimizers, config.find_lr_steps, precision, env.device)
    except ValueError as exc:
        raise UserError(f"--find-lr: {exc}") from None
    files = []
    if env.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        path = plan.run_dir / "lr-find.json"
        path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        files.append(path)
        from lmkit.plotting import plot_range_test

        picture = plot_range_test(result, plan.run_dir / "lr-find.png")
        if picture:
            files.append(picture)
    return FinetuneResult(range_test=result, range_test_files=files)
