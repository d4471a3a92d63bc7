"""``lmkit pretrain``: a language model trained from a dataset artifact into a run directory.

This file decides what to train (the model, the objective, the batch, the run directory's state);
training.run does the training, as for every training stage. All checks on the inputs happen
before any compute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmkit import artifacts
from lmkit import config as config_lib
from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.models import build_model
from lmkit.models.presets import model_config
from lmkit.stages.pretrain_config import DEFAULT_STEPS, PretrainConfig
from lmkit.training import budget, distributed, downstream, rundir
from lmkit.training.objectives import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    SENTENCE_OBJECTIVES,
    ObjectiveInputs,
    refuse_unread_options,
)
from lmkit.training.run import TrainingPlan, batch_layout, run_training, sequence_length

# The objectives --objective chooses from (PretrainConfig spells them for --help without importing torch).
PRETRAIN_OBJECTIVES = tuple(sorted({*DEFAULT_OBJECTIVE.values(), *SENTENCE_OBJECTIVES}))


def prepare(config: PretrainConfig) -> PretrainConfig:
    """What the command line resolves before the run (and --print-config shows): a --mixture file's datasets and
    weights, then --budget's choices (each once)."""
    return budget.apply(config.with_mixture())


def run(config: PretrainConfig) -> artifacts.Artifact:
    config = prepare(config)  # --budget: the model, steps, batch and rate it chooses (once)
    env = distributed.setup()
    try:
        return run_training(plan(config, env))
    finally:
        distributed.teardown(env)


def plan(config: PretrainConfig, env: distributed.Distributed) -> TrainingPlan:
    datasets = [artifacts.load(path, kind="dataset") for path in config.dataset]
    dataset = datasets[0]
    tokenizer = artifacts.load(dataset.path / "tokenizer", kind="tokenizer")
    for path, other in zip(config.dataset[1:], datasets[1:]):
        theirs = artifacts.read_manifest(other.path / "tokenizer")["id"]
        if theirs != tokenizer.id:
            raise UserError(f"{path}: was tokenized with another tokenizer ({theirs[:12]}) than {config.dataset[0]} "
                            f"({tokenizer.id[:12]}); a mixture needs one tokenizer: preprocess it with --tokenizer "
                            f"{dataset.path / 'tokenizer'}")
    model_cfg = model_config(config.model, int(tokenizer.stats["vocab_size"]), **config.model_overrides())
    spec = OBJECTIVES[DEFAULT_OBJECTIVE[model_cfg.arch] if config.objective == "auto" else config.objective]
    spec.check_arch(model_cfg.arch, "--objective", f"--model {config.model}")
    chosen = (f"--objective {spec.name}" if config.objective != "auto" else
              f"--objective auto ({spec.name} for a {model_cfg.arch} model)")
    refuse_unread_options(config, [spec], chosen,
                          {f"--objective {name}": OBJECTIVES[name] for name in PRETRAIN_OBJECTIVES})
    if spec.name in SENTENCE_OBJECTIVES:  # segment ids, and the pooler and head the sentence task trains
        model_cfg = dataclasses.replace(model_cfg, pooler=True, sentence_head=True,
                                        type_vocab_size=model_cfg.type_vocab_size or 2)
    if config.shard and model_cfg.arch == "lstm":
        raise UserError("--shard: FSDP2 shards transformer blocks; an LSTM model is trained unsharded")
    if config.shard and env.world_size == 1 and not env.rendezvous:  # one process under torchrun may shard (a test)
        raise UserError("--shard: needs torchrun (FSDP2 shards over its processes); run under torchrun "
                        "--nproc_per_node N")
    if config.shard and config.optimizer == "muon":
        raise UserError("--shard with --optimizer muon: Muon needs whole matrices; use adamw with --shard")
    seq_len = sequence_length(config, model_cfg)
    layout = batch_layout(config, seq_len, env)
    identity = {**config_lib.identity_dict(config),
                "dataset": dataset.id if len(datasets) == 1 else [d.id for d in datasets]}
    parents = [("dataset", d) for d in datasets]
    init_from = None
    if config.init_from:
        init_from = read_checkpoint(config.init_from)
        if init_from.model_config != model_cfg:
            source = init_from.model_config
            raise UserError(f"--init-from {config.init_from}: its model ({source.arch}, {source.d_model} wide, "
                            f"{source.n_layer} layers, vocab {source.vocab_size}) differs from the one requested")
        if artifacts.load(init_from.tokenizer_path).id != tokenizer.id:
            raise UserError(f"--init-from {config.init_from}: its tokenizer differs from the dataset's")
        identity["init_from"] = init_from.artifact.id
        parents.append(("init", init_from.artifact))
    run_dir = Path(config.out)
    start = rundir.start_run(run_dir, config, identity, env, model_cfg, layout, seq_len)
    inputs = ObjectiveInputs(spec.options_from(config), dataset.path, tokenizer, model_cfg, seq_len, layout,
                             env.device, config.seed, more_data=[d.path for d in datasets[1:]],
                             weights=config.weights, mix_alpha=config.mix_alpha)

    def new_model(_built):
        model = build_model(model_cfg)
        if init_from is not None:
            model.load_state_dict(init_from.build_model().state_dict())
        return model

    if config.eval_tasks and spec.name != "clm":
        raise UserError(f"--eval-tasks: scores a causal model's choices; {chosen} trains a {spec.name} model")
    if config.eval_tasks and not config.eval_every:
        raise UserError("--eval-tasks: scored at each validation; --eval-every 0 never validates")
    evaluations = downstream.downstream_tasks(config.eval_tasks, config.eval_task_items, dataset, tokenizer, seq_len,
                                              env.device, layout.micro_batch, config.harness_include, config.seed)
    stats = {}
    if len(datasets) > 1:
        stats["mixture"] = mixture_stats(config, datasets, spec.name, seq_len,
                                         config.step_limit(DEFAULT_STEPS) * layout.global_batch)
    budget_plan = getattr(config, "budget_plan", None)
    if budget_plan is not None:
        stats["budget"] = budget_plan
    return TrainingPlan(options=config, env=env, spec=spec, inputs=inputs, model_config=model_cfg, run_dir=run_dir,
                        start=start, parents=parents, new_model=new_model,
                        step_limit=lambda _objective: config.step_limit(DEFAULT_STEPS), label=config.model,
                        sharded=config.shard, stats=stats, evaluations=evaluations)


def mixture_stats(config: PretrainConfig, datasets: list[artifacts.Artifact], objective: str, seq_len: int,
                  samples: int) -> dict:
    """What the manifest records of a mixture: each source's id, path, train tokens, windows, sampling share
    and the epochs of it that the planned samples read (the schedule of packing.Mixture)."""
    from types import SimpleNamespace

    from lmkit.data.packing import Mixture, causal_window_count, masked_window_count
    from lmkit.training.objectives.language_modeling import mixture_shares

    tokens = [int(d.stats["splits"]["train"]["tokens"]) + int(d.stats["splits"]["train"]["documents"])
              for d in datasets]  # with the separator after each document, as the stream has
    count = causal_window_count if objective == "clm" else masked_window_count
    windows = [count(n, seq_len) for n in tokens]
    shares = mixture_shares(tokens, config.weights, config.mix_alpha)
    mixture = Mixture([SimpleNamespace(count=max(w, 1)) for w in windows], shares, config.seed)
    epochs = mixture.epochs(samples)
    return {"rule": (f"weights {config.weights}" if config.weights else
                     f"train tokens to the power {1.0 if config.mix_alpha is None else config.mix_alpha:g}"),
            "samples": samples,
            "sources": [{"dataset": path, "id": d.id, "train_tokens": n, "windows": w, "share": round(share, 6),
                         "epochs": round(e, 4)}
                        for path, d, n, w, share, e in zip(config.dataset, datasets, tokens, windows, mixture.shares,
                                                           epochs)]}
