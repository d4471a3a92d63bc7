"""``lmkit pretrain``: a language model trained from a dataset artifact into a run directory
(see rundir.py for what it holds). All checks on the inputs happen before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lmkit import artifacts, config as config_lib
from lmkit.data.packing import EOS_ID, SEP_ID, MaskingSettings, load_stream
from lmkit.errors import UserError
from lmkit.models import build_model, count_parameters, flops_per_token
from lmkit.models.config import ModelConfig
from lmkit.models.presets import model_config
from lmkit.progress import reporter
from lmkit.stages.pretrain_config import PretrainConfig, parse_duration
from lmkit.training import distributed
from lmkit.stages import rundir
from lmkit.stages.rundir import FINAL
from lmkit.training.checkpoint import TrainerState, read_checkpoint
from lmkit.training.loop import LoopSettings, fit
from lmkit.training.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, BatchLayout, CausalLM, MaskedLM
from lmkit.training.optim import build_optimizer

def resolve_precision(requested: str, device: torch.device) -> str:
    """bf16 where the hardware computes it natively (CUDA bf16, or AVX-512 BF16 / AMX CPUs)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if native else "fp32"


@dataclass
class _Plan:
    """Everything decided before compute: model, objective, batch layout, the run directory's state."""

    dataset: artifacts.Artifact
    tokenizer: artifacts.Artifact
    model_config: ModelConfig
    objective: str
    seq_len: int
    layout: BatchLayout
    run_dir: Path
    recipe: str
    resume_from: Path | None
    init_from: Path | None


def _plan(config: PretrainConfig, env: distributed.Distributed) -> _Plan:
    dataset = artifacts.load(config.dataset, kind="dataset")
    tokenizer = artifacts.load(dataset.path / "tokenizer", kind="tokenizer")
    vocab_size = int(tokenizer.stats["vocab_size"])
    model_cfg = model_config(config.model, vocab_size, **config.model_overrides())
    objective = DEFAULT_OBJECTIVE[model_cfg.arch] if config.objective == "auto" else config.objective
    if model_cfg.arch not in OBJECTIVES[objective].archs:
        raise UserError(f"--objective {objective} does not fit a {model_cfg.arch} model (--model {config.model}); "
                        f"{objective} trains {', '.join(OBJECTIVES[objective].archs)}")
    if config.shard and model_cfg.arch == "lstm":
        raise UserError("--shard: FSDP2 shards transformer blocks; an LSTM model is trained unsharded")
    if config.shard and env.world_size == 1:
        raise UserError("--shard: needs several processes; run under torchrun --nproc_per_node N")
    if config.shard and config.optimizer == "muon":
        raise UserError("--shard with --optimizer muon: Muon needs whole matrices; use adamw with --shard")
    seq_len = config.seq_len or min(model_cfg.block_size, 256)
    if seq_len > model_cfg.block_size:
        raise UserError(f"--seq-len {seq_len} exceeds the model's block size {model_cfg.block_size} "
                        "(raise --block-size or lower --seq-len)")
    if objective == "mlm" and seq_len < 4:
        raise UserError("--seq-len: masked LM windows need at least 4 tokens ([CLS] ... [SEP])")
    per_micro = config.micro_batch * seq_len * env.world_size
    batch_tokens = config.batch_tokens or per_micro
    if batch_tokens % per_micro:
        raise UserError(f"--batch-tokens {batch_tokens} is not a multiple of --micro-batch x --seq-len x processes "
                        f"= {per_micro}")
    layout = BatchLayout(config.micro_batch, batch_tokens // per_micro, env.world_size)
    init_from = None
    if config.init_from:
        source = read_checkpoint(config.init_from)
        if source.model_config != model_cfg:
            raise UserError(f"--init-from {config.init_from}: its model ({source.model_config.arch}, "
                            f"{source.model_config.d_model} wide, {source.model_config.n_layer} layers, vocab "
                            f"{source.model_config.vocab_size}) differs from the one requested")
        if artifacts.load(source.tokenizer_path).id != tokenizer.id:
            raise UserError(f"--init-from {config.init_from}: its tokenizer differs from the dataset's")
        init_from = source.path
    run_dir = Path(config.out)
    identity = {**config_lib.identity_dict(config), "dataset": dataset.id}
    if init_from:
        identity["init_from"] = artifacts.load(init_from).id
    recipe = artifacts.make_recipe("checkpoint", identity, [], [{"role": "dataset", "id": dataset.id}])
    resume_from = rundir.inspect_run_dir(run_dir, config, recipe, env, model_cfg, _RESUME_INVARIANTS)
    return _Plan(dataset, tokenizer, model_cfg, objective, seq_len, layout, run_dir, recipe, resume_from, init_from)


# What fixes a run's data order and model: a resumed run must keep them (limits may change).
_RESUME_INVARIANTS = ("seq_len", "micro_batch", "batch_tokens", "seed", "objective", "optimizer", "shard")


def run(config: PretrainConfig) -> artifacts.Artifact:
    env = distributed.setup()
    try:
        return _run(config, env)
    finally:
        distributed.teardown(env)


def _run(config: PretrainConfig, env: distributed.Distributed) -> artifacts.Artifact:
    plan = _plan(config, env)
    if plan.resume_from is None and rundir.up_to_date(plan.run_dir, plan.recipe):
        return rundir.existing_final(plan.run_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    precision = resolve_precision(config.precision, env.device)

    separator = SEP_ID if plan.objective == "mlm" else EOS_ID
    train_stream = load_stream(plan.dataset, "train", separator)
    validation = plan.dataset.stats["splits"].get("validation")
    val_stream = load_stream(plan.dataset, "validation", separator) if validation and validation["documents"] else None
    if plan.objective == "clm":
        objective = CausalLM(train_stream, val_stream, plan.seq_len, plan.layout, config.seed, env.device)
    else:
        masking = MaskingSettings(config.mask_prob, config.mask_replace, config.mask_random)
        objective = MaskedLM(train_stream, val_stream, plan.seq_len, plan.layout, config.seed, env.device,
                             plan.model_config.vocab_size, masking)
    per_step = plan.layout.global_batch
    if objective.train_windows.count < per_step:
        raise UserError(f"{config.dataset}: the train split has {objective.train_windows.count} windows of "
                        f"{plan.seq_len} tokens, fewer than one batch ({per_step}); lower --seq-len, "
                        "--micro-batch or --batch-tokens, or add data")
    if (config.eval_every or config.patience) and (objective.val_windows is None or objective.val_windows.count == 0):
        reporter.warn(f"{config.dataset}: no validation window of {plan.seq_len} tokens; no evaluation, best "
                      "checkpoint or early stopping (make a validation split with --val-fraction)")
    torch.manual_seed(config.seed)
    model = build_model(plan.model_config).to(env.device)
    if plan.init_from:
        model.load_state_dict(read_checkpoint(plan.init_from).build_model().state_dict())
    checkpoint = read_checkpoint(plan.resume_from) if plan.resume_from is not None else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint.build_model().state_dict())
    if config.shard:
        distributed.shard_model(model)  # after loading full weights, before the optimizer sees parameters
    optimizers = build_optimizer(model, config.optimizer, config.lr, config.weight_decay, (config.beta1, config.beta2))
    state = TrainerState(world_size=env.world_size)
    if checkpoint is not None:
        state = checkpoint.restore_training(optimizers, sharded_model=model if config.shard else None)
        reporter.info(f"resuming from {plan.resume_from} (step {state.step})")
    # Only now, with every input read and checked, is the run directory touched.
    rundir.prepare(plan.run_dir, config, env, fresh=plan.resume_from is None)

    n_params = count_parameters(model)
    flops = flops_per_token(plan.model_config, plan.seq_len)
    reporter.info(f"{config.model}: {plan.model_config.arch}, {n_params:,} parameters, {flops / 1e6:,.1f} MFLOPs "
                  f"per token; objective {plan.objective}, {precision}, {plan.layout.global_batch} windows x "
                  f"{plan.seq_len} tokens per step ({plan.layout.accumulation} accumulation, "
                  f"{env.world_size} process(es))")

    parents = [("dataset", plan.dataset)] + ([("init", artifacts.load(plan.init_from))] if plan.init_from else [])
    saver = rundir.CheckpointSaver(
        plan.run_dir, plan.recipe, config, plan.model_config, plan.objective, plan.tokenizer, parents,
        {"parameters": n_params, "flops_per_token": flops, "objective": plan.objective,
         "arch": plan.model_config.arch}, env, sharded=config.shard)

    def save(tag: str, trainer_state: TrainerState, optimizer_state) -> Path:
        return saver.save(tag, model, optimizer_state, trainer_state)

    tokens_per_step = plan.layout.global_batch * plan.seq_len
    # A decaying schedule needs its length: the step limit, or the token limit in steps.
    schedule_steps = config.max_steps or -(-config.max_tokens // tokens_per_step)
    settings = LoopSettings(
        lr=config.lr, schedule=config.schedule, warmup_steps=config.warmup_steps, min_lr_ratio=config.min_lr_ratio,
        decay_fraction=config.decay_fraction, grad_clip=config.grad_clip, max_steps=config.max_steps,
        schedule_steps=schedule_steps,
        max_tokens=config.max_tokens, max_seconds=parse_duration(config.max_time), eval_every=config.eval_every,
        eval_batches=config.eval_batches, patience=config.patience, checkpoint_every=config.checkpoint_every,
        log_every=config.log_every, precision=precision, compile=config.compile, flops_per_token=flops,
        peak_flops=config.peak_tflops * 1e12, sharded=config.shard)
    state = fit(model, objective, optimizers, settings, plan.layout, env, plan.run_dir, state, save,
                last_checkpoint=plan.resume_from)
    final = save(FINAL, state, optimizers)
    rundir.write_plot(plan.run_dir, env)
    return artifacts.load(final)
