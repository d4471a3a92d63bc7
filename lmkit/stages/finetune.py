"""``lmkit finetune``: a pretrained checkpoint trained further on labeled data (classification),
instruction/response pairs (SFT), question/context/answer records (extractive QA) or domain text
(continued clm/mlm), optionally with LoRA, frozen layers or a distillation teacher.

This file decides what to train: the task (an objective from the registry), the model (the base's
weights, a fresh student, LoRA, freezing) and what final/ holds; training.run trains it, as for
every training stage. Every check on the inputs happens before any compute and before the run
directory is touched.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmkit import artifacts
from lmkit import config as config_lib
from lmkit.checkpoint import Checkpoint, read_checkpoint
from lmkit.data.conversations import looks_like_conversations
from lmkit.data.jsonl import first_record
from lmkit.data.preferences import looks_like_preferences
from lmkit.data.qa import looks_like_qa
from lmkit.errors import UserError
from lmkit.evaluation.rewards import code_files
from lmkit.models import build_model, count_parameters
from lmkit.models.classifier import SequenceClassifier, classifier_config, default_pooling
from lmkit.models.config import ModelConfig
from lmkit.models.lora import apply_lora, merge_lora
from lmkit.models.presets import model_config
from lmkit.models.span import SpanExtractor
from lmkit.progress import reporter
from lmkit.stages.finetune_config import TASKS, FinetuneConfig, parse_freeze
from lmkit.tokenizer import load as load_tokenizer
from lmkit.training import distributed, rundir
from lmkit.training.checkpoint import step_tag
from lmkit.training.objectives import OBJECTIVES, Built, ObjectiveInputs, refuse_unread_options
from lmkit.training.run import Session, TrainingPlan, batch_layout, open_session, run_training, sequence_length

# What a teacher must be for each task: its checkpoint's task (and, for language models, its objective).
CAUSAL_TASKS = ("sft", "chat", "clm", "dpo", "orpo", "grpo")  # what needs a causal base
PREFERENCE_TASKS = ("dpo", "orpo")  # validated on held-out pairs: loss or preference_accuracy
_TEACHER_TASKS = {"classify": ("classify",), "sft": ("lm", "sft"), "clm": ("lm", "sft"), "mlm": ("lm",)}


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
        planned = plan(config, env)
        if config.find_lr:
            return _find_lr(planned)
        comparison: dict[str, Any] = {}
        planned.finish = lambda session: _finish(session, comparison)
        checkpoint = run_training(planned)
        return FinetuneResult(checkpoint=checkpoint, comparison=comparison or None)
    finally:
        distributed.teardown(env)


def _task(config: FinetuneConfig, base: Checkpoint, data: Path) -> str:
    if config.task != "auto":
        return config.task
    if data.is_file():
        if looks_like_preferences(first_record(data)):  # before chat: a pair's prompt may be a conversation
            return "dpo"
        return "qa" if looks_like_qa(data) else "chat" if looks_like_conversations(data) else "sft"
    if (data / artifacts.MANIFEST).is_file():
        if "labels" in artifacts.read_manifest(data).get("stats", {}):
            return "classify"
        return "mlm" if base.model_config.arch == "bert" else "clm"
    raise UserError(f"{data}: neither a dataset artifact nor a JSONL file")


def plan(config: FinetuneConfig, env: distributed.Distributed) -> TrainingPlan:
    base = read_checkpoint(config.base)
    if base.task in ("classify", "qa"):
        kind = "a classifier" if base.task == "classify" else "a question-answering (span)"
        raise UserError(f"{config.base}: is {kind} checkpoint; finetune starts from a language model "
                        "(a pretrain or sft checkpoint)")
    tokenizer = artifacts.load(base.tokenizer_path, kind="tokenizer")
    data_path = Path(config.data)
    task = _task(config, base, data_path)
    spec = OBJECTIVES[task]
    _refuse_unread_options(config, task)
    model_cfg = base.model_config
    if config.model:
        model_cfg = model_config(config.model, base.model_config.vocab_size, **config.model_overrides())
    if config.dropout is not None:
        model_cfg = dataclasses.replace(model_cfg, dropout=config.dropout)
    if config.block_size is not None and config.block_size != model_cfg.block_size:
        model_cfg = extend_context(model_cfg, config.block_size, config.rope_scaling, config.rope_factor)
        if not config.seq_len:
            config = dataclasses.replace(config, seq_len=model_cfg.block_size)
        reporter.info(f"context {base.model_config.block_size} -> {model_cfg.block_size} tokens (rope scaling "
                      f"{model_cfg.rope_scaling}" + (f", factor {model_cfg.rope_factor:g})" if
                                                     model_cfg.rope_scaling != "none" else ")"))
    spec.check_arch(model_cfg.arch, "--task", f"--model {config.model}" if config.model else config.base)
    if task == "classify":
        if config.pooling == "auto":
            pooling = default_pooling(model_cfg, not (config.scratch or config.model),
                                      bool(base.artifact.stats.get("imported")))
            config = dataclasses.replace(config, pooling=pooling)
        model_cfg = classifier_config(model_cfg)  # classic BERT classifies through its pooler
    if task in CAUSAL_TASKS and (base.masked_lm or base.model_config.arch == "bert") and not config.model:
        raise UserError(f"{config.base}: was trained with {base.objective}; --task {task} needs a causal model")
    grown = None
    if spec.vocabulary is not None:  # the objective adds tokens (chat): the model's vocabulary grows with them
        tokenizer, grown = _grow_vocabulary(spec, config, tokenizer, base)
        if grown is not None:
            model_cfg = dataclasses.replace(model_cfg, vocab_size=max(model_cfg.vocab_size, grown.stop))
            if parse_freeze(config.freeze)[0]:
                raise UserError(f"--freeze embeddings: --task {task} adds tokens to the tokenizer, whose embedding "
                                "rows must be learned; drop embeddings from --freeze")
    metric = _metric(config, task)  # refuses a classification metric for another task before reading any data
    _freeze_layers(config, model_cfg)
    if config.lora_rank and model_cfg.arch == "lstm":
        raise UserError("--lora-rank: an LSTM has no attention or MLP projections to adapt")
    lr, why = config.learning_rate(model_cfg.d_model)
    if config.lr is None:
        config = dataclasses.replace(config, lr=lr)
        if not config.find_lr:
            reporter.info(f"learning rate {lr:.3g} ({why}; --lr to choose)")
    seq_len = sequence_length(config, model_cfg)
    layout = batch_layout(config, seq_len, env)
    teacher = _teacher(config, tokenizer, task, seq_len) if config.teacher else None
    identity: dict[str, Any] = {**config_lib.identity_dict(config), "base": base.artifact.id}
    parents: list[tuple[str, artifacts.Artifact]] = [("base", base.artifact)]
    if config.chat_template:  # the template's content, not its file name
        identity["chat_template"] = artifacts.describe_file(config.chat_template)["sha256"]
    rewards = [path for path in code_files(config.reward) if Path(path).is_file()]
    if rewards:  # grpo: a reward function's code by its content (a missing file is refused when it is imported)
        identity["reward_code"] = [artifacts.describe_file(path)["sha256"] for path in rewards]
    if data_path.is_file():
        identity["data"] = artifacts.describe_file(data_path)["sha256"]
    else:
        dataset = artifacts.load(data_path, kind="dataset")
        identity["data"] = dataset.id
        parents.append(("dataset", dataset))
    if teacher is not None:
        identity["teacher"] = teacher.artifact.id
        parents.append(("teacher", teacher.artifact))
    if config.reference:  # DPO's (or GRPO's KL) reference, by its id (the objective checks it when it is built)
        reference = read_checkpoint(config.reference).artifact
        identity["reference"] = reference.id
        parents.append(("reference", reference))
    lora = ({"lora": {"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout}}
            if config.lora_rank else {})
    run_dir = Path(config.out)
    start = rundir.start_run(run_dir, config, identity, env, model_cfg, layout, seq_len)
    inputs = ObjectiveInputs(spec.options_from(config), data_path, tokenizer, model_cfg, seq_len, layout, env.device,
                             config.seed, teacher=teacher, base=base)
    return TrainingPlan(options=config, env=env, spec=spec, inputs=inputs, model_config=model_cfg, run_dir=run_dir,
                        start=start, parents=parents,
                        new_model=lambda built: _new_model(built, config, base, model_cfg, grown),
                        step_limit=lambda objective: config.step_limit_for(objective.train_windows.count,
                                                                          layout.global_batch),
                        label=f"finetune ({task})", stats={"task": task}, metric=metric, eval_at_end=True,
                        model_extra=lora)


def _grow_vocabulary(spec, config: FinetuneConfig, tokenizer: artifacts.Artifact, base: Checkpoint
                     ) -> tuple[artifacts.Artifact, range | None]:
    """The objective's tokenizer and the ids it adds to the base's (None: none added)."""
    grown = spec.vocabulary(spec.options_from(config), tokenizer, base)
    if grown.id == tokenizer.id:
        return tokenizer, None
    before, after = load_tokenizer(tokenizer.path), load_tokenizer(grown.path)
    added = range(before.vocab_size, after.vocab_size)
    reporter.info(f"tokenizer: {', '.join(repr(after.id_to_piece(i)) for i in added)} added (ids {added.start}-"
                  f"{added.stop - 1}); their embedding rows start at the mean of the existing ones")
    return grown, added


def _grown_state(state: dict[str, torch.Tensor], vocab_size: int, added: range) -> dict[str, torch.Tensor]:
    """The base's weights with the input and output embeddings grown to ``vocab_size`` rows, the rows of the
    ``added`` tokens set to the mean of the rows before them (Hewitt 2021, "Initializing new word embeddings for
    pretrained language models": the new tokens start as the average token, so the model's outputs barely move;
    transformers' resize_token_embeddings(mean_resizing=True) samples around that mean)."""
    grown = dict(state)
    for name in ("tok_emb.weight", "lm_head.weight"):
        if name not in state:
            continue
        old = state[name]
        rows = torch.zeros(max(vocab_size, old.shape[0]), *old.shape[1:], dtype=old.dtype)
        rows[:old.shape[0]] = old
        rows[added.start:added.stop] = old[:added.start].mean(dim=0)
        grown[name] = rows
    return grown


def _refuse_unread_options(config: FinetuneConfig, task: str) -> None:
    """Refuse the options of other tasks (and distillation's without --teacher) that the user set."""
    chosen = [OBJECTIVES[task]] + ([OBJECTIVES["distill"]] if config.teacher else [])
    what = (f"--task {task}" if config.task != "auto" else f"--task auto ({task} for {config.data})") + \
        (" with --teacher" if config.teacher else "")
    offered = {f"--task {name}": OBJECTIVES[name] for name in TASKS if name != "auto"}
    refuse_unread_options(config, chosen, what, {**offered, "--teacher": OBJECTIVES["distill"]})


def extend_context(model_cfg: ModelConfig, block_size: int, scaling: str | None, factor: float | None) -> ModelConfig:
    """``model_cfg`` reading ``block_size`` tokens: a rotary model's positions past the base's are scaled
    (linear by default, by new / old) so that they turn through angles the model was trained on."""
    old = model_cfg.block_size
    if model_cfg.positions != "rope":
        raise UserError(f"--block-size {block_size}: the base has {old} learned position embeddings and no more; "
                        "a longer context needs a rotary model")
    if block_size < old:
        if scaling is not None or factor is not None:
            raise UserError(f"--block-size {block_size}: shorter than the base's {old}; no rope scaling is needed")
        return dataclasses.replace(model_cfg, block_size=block_size)
    if model_cfg.rope_scaling != "none":
        raise UserError(f"--block-size {block_size}: the base already scales its rotary positions "
                        f"({model_cfg.rope_scaling}); lmkit does not stack a second scaling on it")
    scaling = scaling or "linear"
    fields: dict[str, Any] = {"block_size": block_size, "rope_scaling": scaling}
    if scaling != "none":
        fields.update(rope_factor=float(factor or block_size / old), rope_original_length=old)
    try:
        return dataclasses.replace(model_cfg, **fields)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _freeze_layers(config: FinetuneConfig, model_cfg) -> None:
    _embeddings, layers = parse_freeze(config.freeze)
    if layers and (model_cfg.arch == "lstm" or layers > model_cfg.n_layer):
        has = "no separate blocks (LSTM)" if model_cfg.arch == "lstm" else f"{model_cfg.n_layer} blocks"
        raise UserError(f"--freeze layers:{layers}: the model has {has}")


def _teacher(config: FinetuneConfig, tokenizer: artifacts.Artifact, task: str, seq_len: int) -> Checkpoint:
    if task not in _TEACHER_TASKS:
        raise UserError(f"--teacher: distillation covers --task {', '.join(_TEACHER_TASKS)}, not {task}")
    teacher = read_checkpoint(config.teacher)
    if teacher.model_config.block_size < seq_len:
        raise UserError(f"--teacher {config.teacher}: its block size {teacher.model_config.block_size} is below "
                        f"--seq-len {seq_len}; lower --seq-len")
    if artifacts.load(teacher.tokenizer_path, kind="tokenizer").id != tokenizer.id:
        raise UserError(f"--teacher {config.teacher}: its tokenizer differs from {config.base}'s; a teacher's soft "
                        "targets are over the same tokens (or labels) as the student's")
    if (teacher.task not in _TEACHER_TASKS[task]
            or (task != "classify" and teacher.masked_lm) != (task == "mlm")):
        raise UserError(f"--teacher {config.teacher}: a {teacher.task} checkpoint ({teacher.objective}) cannot teach "
                        f"--task {task}")
    return teacher


def _new_model(built: Built, config: FinetuneConfig, base: Checkpoint, model_cfg, added: range | None = None
               ) -> torch.nn.Module:
    """The model to train, with the base's weights unless --scratch or --model; LoRA and freezing applied;
    ``added``: token ids the objective added, whose embedding rows are new."""
    head, qa = built.extra.get("head"), built.extra.get("qa")
    if head is not None:
        model = SequenceClassifier(model_cfg, len(head["labels"]), head["pooling"])
        body = model.backbone
    elif qa is not None:
        model = SpanExtractor(model_cfg)
        body = model.backbone
    else:
        model = body = build_model(model_cfg)
    if not (config.scratch or config.model):
        # no LM head in a classifier
        state = base.inference_model().state_dict()
        if added is not None:
            state = _grown_state(state, model_cfg.vocab_size, added)
        missing, _ = body.load_state_dict(state, strict=False)
        missing = [name for name in missing if not name.startswith("pooler.")]  # a new pooler starts fresh
        if missing:
            raise UserError(f"{config.base}: its weights lack {missing[:3]} for this model")
    if config.lora_rank:
        apply_lora(body, config.lora_rank, config.lora_alpha, config.lora_dropout)
        if head is not None or qa is not None:
            model.head.requires_grad_(True)  # the new head is trained in full
        if added is not None:  # the added tokens' rows must be learned (PEFT's modules_to_save on the embeddings)
            body.tok_emb.requires_grad_(True)
            body.lm_head.requires_grad_(True)
    embeddings, layers = parse_freeze(config.freeze)
    if embeddings:
        body.tok_emb.requires_grad_(False)  # tied: the output projection too
    for block in list(getattr(body, "blocks", []))[:layers]:
        block.requires_grad_(False)
    return model


def _finish(session: Session, comparison: dict[str, Any]) -> Path:
    """final/: the best weights (--final best), the teacher-student comparison, LoRA merged (--lora-merge)."""
    config, state, model = session.plan.options, session.state, session.model
    swapped = config.final == "best" and state.best_step is not None and state.best_step != state.step
    if swapped:
        best = read_checkpoint(session.plan.run_dir / step_tag(state.best_step))
        model.load_state_dict(best.build_model().state_dict())
        reporter.info(f"final/ holds the best weights (step {state.best_step}, {session.plan.metric} "
                      f"{state.best_metric:.4f})")
    if session.plan.inputs.teacher is not None:
        comparison.update(_compare(session))
        session.saver.stats["distillation"] = comparison  # in final/'s manifest, for reports and Make
    if config.lora_rank and config.lora_merge:
        merge_lora(model)
        return session.save_final(resumable=False, extra=session.built.extra or None)
    # The best step's weights with the last step's optimizer moments would be no state to continue from.
    return session.save_final(resumable=not swapped)


def _metric(config: FinetuneConfig, task: str) -> str:
    name = config.metric
    if name == "auto":
        return OBJECTIVES[task].metric
    if task == "qa" and name == "accuracy":
        raise UserError("--metric accuracy: is a classification metric; --task qa validates on f1, exact_match "
                        "or loss")
    if name == "exact_match" and task != "qa":
        raise UserError(f"--metric exact_match: is a question-answering metric; --task {task} validates on "
                        f"{OBJECTIVES[task].metric.removeprefix('val_')}")
    if name == "preference_accuracy" and task not in PREFERENCE_TASKS:
        raise UserError("--metric preference_accuracy: is a preference-tuning metric (--task dpo or orpo); "
                        f"--task {task} validates on {OBJECTIVES[task].metric.removeprefix('val_')}")
    if task in PREFERENCE_TASKS and name not in ("loss", "preference_accuracy"):
        raise UserError(f"--metric {name}: --task {task} validates on loss or preference_accuracy (held-out pairs)")
    if name in ("pass_rate", "reward") and task != "grpo":
        raise UserError(f"--metric {name}: is an RL metric (--task grpo); --task {task} validates on "
                        f"{OBJECTIVES[task].metric.removeprefix('val_')}")
    if task == "grpo" and name not in ("pass_rate", "reward"):
        raise UserError(f"--metric {name}: --task grpo validates on pass_rate or reward (greedy replies to held-out "
                        "prompts)")
    if name in ("accuracy", "f1") and task not in ("classify", "qa"):
        raise UserError(f"--metric {name}: is a classification metric; --task {task} validates on loss")
    return f"val_{name}"


@torch.no_grad()
def _compare(session: Session) -> dict[str, Any]:
    """Teacher against student on the validation data: parameters, metric, forward speed."""
    plan, objective = session.plan, session.built.objective
    teacher = session.objective.teacher
    rows = {}
    for name, model in (("teacher", teacher), ("student", session.model)):
        model.eval()
        started = time.perf_counter()
        framing = {"arch": plan.inputs.teacher.model_config.arch} \
            if name == "teacher" and plan.spec.name == "classify" else {}
        metrics = objective.evaluate(model, 0, **framing)
        seconds = time.perf_counter() - started
        examples = objective.val_windows.count if objective.val_windows else 0
        rows[name] = {"parameters": count_parameters(model), **metrics,
                      "examples_per_s": examples / seconds if seconds > 0 else 0.0}
    reporter.info("distillation: " + "; ".join(
        f"{name} {row['parameters']:,} parameters, {plan.metric} {row.get(plan.metric, float('nan')):.4f}, "
        f"{row['examples_per_s']:,.0f} examples/s" for name, row in rows.items()))
    return rows


def _find_lr(plan: TrainingPlan) -> FinetuneResult:
    from lmkit.plotting import plot_range_test
    from lmkit.training.lr_find import lr_range_test

    session = open_session(plan)
    config = plan.options
    try:
        result = lr_range_test(session.model, session.objective, session.optimizers, config.find_lr_steps,
                               session.precision, plan.env.device)
    except ValueError as exc:
        raise UserError(f"--find-lr: {exc}") from None
    files = []
    if plan.env.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        path = plan.run_dir / "lr-find.json"
        path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        files.append(path)
        picture = plot_range_test(result, plan.run_dir / "lr-find.png")
        if picture:
            files.append(picture)
    return FinetuneResult(range_test=result, range_test_files=files)
