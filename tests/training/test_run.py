"""The run skeleton every training stage shares: preemptible relaunches (--auto-resume), honest
"up to date" after a resume, changed settings recorded, time- and token-bounded runs, the progress
it reports, torch.compile, and a third training stage written as one page on top of it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.errors import Interrupted, UserError
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training import distributed, rundir
from lmkit.training import loop as loop_module
from lmkit.training.objectives import Built, Count, ObjectiveInputs, ObjectiveSpec, register
from lmkit.training.objectives.base import OBJECTIVES, BatchLayout
from lmkit.training.objectives.language_modeling import CausalLM
from lmkit.training.run import TrainingPlan, run_training
from tests.conftest import sigterm_at_call

FAST = {"seq_len": 32, "micro_batch": 4, "eval_every": 0, "checkpoint_every": 2, "warmup_steps": 2,
        "lr": 3e-3, "precision": "fp32", "log_every": 1}


def config(dataset, out, **overrides):
    return resolve(PretrainConfig, {}, {"dataset": str(dataset), "out": str(out), **FAST, **overrides})


def weights(path):
    return read_checkpoint(path).build_model().state_dict()


def recipe(path):
    return artifacts.read_manifest(path)["recipe"]


def test_auto_resume_runs_one_command_line_for_every_launch(dataset, tmp_path, monkeypatch):
    full = pretrain.run(config(dataset, tmp_path / "full", max_steps=8))
    launch = config(dataset, tmp_path / "job", max_steps=8, auto_resume=True)
    with monkeypatch.context() as patch:  # the first launch is preempted in its fourth step
        patch.setattr(CausalLM, "loss", sigterm_at_call(CausalLM.loss, 4))
        with pytest.raises(Interrupted):
            pretrain.run(launch)
    assert [p.name for p in rundir.checkpoints(tmp_path / "job")] == ["step-00000002", "step-00000004"]
    second = pretrain.run(launch)  # the same command line: continues from step 4
    assert not second.up_to_date and second.stats["step"] == 8 and "history" not in second.stats
    for name, tensor in weights(full.path).items():
        assert torch.equal(tensor, weights(second.path)[name]), name
    assert recipe(second.path) == recipe(full.path)  # an interrupted run is the uninterrupted one
    assert pretrain.run(launch).up_to_date  # and a third launch has nothing to do


def test_auto_resume_starts_over_a_run_that_left_no_checkpoint(dataset, tmp_path):
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")  # killed before any save
    with pytest.raises(UserError, match="already holds a run without a checkpoint to resume; use --force"):
        pretrain.run(config(dataset, run_dir, max_steps=2))
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        pretrain.run(config(dataset, run_dir, max_steps=2, resume=True))
    final = pretrain.run(config(dataset, run_dir, max_steps=2, auto_resume=True))
    assert final.stats["step"] == 2
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_a_resumed_run_is_not_up_to_date_for_a_fresh_one_and_records_what_changed(dataset, tmp_path, capfd):
    run_dir = tmp_path / "run"
    pretrain.run(config(dataset, run_dir, max_steps=6))
    resumed = pretrain.run(config(dataset, run_dir, max_steps=12, lr=1e-3, resume=True))
    assert "resumed with changed settings (recorded in the checkpoints' history)" in capfd.readouterr().err
    assert resumed.stats["history"] == [{"until_step": 6, "changed": {"max_steps": 6, "lr": 3e-3}}]
    assert resumed.config["lr"] == 1e-3
    # A fresh 12-step run has another schedule and rate: the resumed run is not its result.
    fresh = config(dataset, run_dir, max_steps=12, lr=1e-3)
    with pytest.raises(UserError, match="already holds a run"):
        pretrain.run(fresh)
    assert recipe(pretrain.run(config(dataset, tmp_path / "fresh", max_steps=12, lr=1e-3)).path) != recipe(resumed.path)
    # Resuming it again with its own settings: up to date.
    assert pretrain.run(config(dataset, run_dir, max_steps=12, lr=1e-3, resume=True)).up_to_date
    capfd.readouterr()
    longer = pretrain.run(config(dataset, run_dir, max_steps=14, lr=1e-3, resume=True))
    said = capfd.readouterr().err
    assert "max_steps 12 -> 14" in said and "lr" not in said.split("changed settings")[1].split("\n")[0]
    assert [h["until_step"] for h in longer.stats["history"]] == [6, 12]


def test_resuming_on_another_dataset_is_refused(dataset, labeled, tmp_path):
    pretrain.run(config(dataset, tmp_path / "run", max_steps=2))
    with pytest.raises(UserError, match=r"cannot resume on other inputs \(dataset changed: DATASET\)"):
        pretrain.run(config(labeled, tmp_path / "run", max_steps=4, resume=True))


def test_max_time_alone_bounds_the_run_and_its_progress(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain, "DEFAULT_STEPS", 3)  # a hidden step limit would stop it at step 3
    seen = {}
    real_task = loop_module.reporter.task

    def recording_task(description, **kwargs):
        seen.update(kwargs)
        return real_task(description, **kwargs)

    monkeypatch.setattr(loop_module.reporter, "task", recording_task)
    final = pretrain.run(config(dataset, tmp_path / "run", max_time="2s", checkpoint_every=0))
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final.stats["step"] > 3 and last["elapsed_s"] >= 2.0
    assert final.config["schedule"] == "auto" and {lr for lr in _rates(tmp_path / "run")[2:]} == {3e-3}  # constant
    assert seen["total"] is None and seen["deadline"] is not None and seen["initial"] == 0


def test_token_limit_gives_the_bar_its_total_and_a_resume_its_initial_steps(dataset, tmp_path, monkeypatch):
    seen = []
    real_task = loop_module.reporter.task

    def recording_task(description, **kwargs):
        seen.append(kwargs)
        return real_task(description, **kwargs)

    monkeypatch.setattr(loop_module.reporter, "task", recording_task)
    pretrain.run(config(dataset, tmp_path / "run", max_tokens=4 * 32 * 5))  # 5 steps of 4 x 32 tokens
    pretrain.run(config(dataset, tmp_path / "run", max_tokens=4 * 32 * 7, resume=True))
    assert [(s["total"], s["initial"]) for s in seen] == [(5, 0), (7, 5)]


def _rates(run_dir):
    return [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_reports_mfu_against_the_measured_peak(dataset, tmp_path):
    pretrain.run(config(dataset, tmp_path / "run", max_steps=2))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(0 < r["mfu"] < 1 for r in records)  # a tiny model's share of the machine's matmul peak


@pytest.mark.slow
def test_compiled_run_trains_and_resumes_exactly(dataset, tmp_path):
    # The rate does not depend on the length; one thread: compiled kernels then reduce in one fixed order.
    same = {"compile": True, "schedule": "constant", "warmup_steps": 0, "threads": 1}
    full = pretrain.run(config(dataset, tmp_path / "full", max_steps=4, **same))
    pretrain.run(config(dataset, tmp_path / "part", max_steps=2, **same))
    resumed = pretrain.run(config(dataset, tmp_path / "part", max_steps=4, resume=True, **same))
    losses = _losses(tmp_path / "full")
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert _losses(tmp_path / "part") == losses
    for name, tensor in weights(full.path).items():
        assert torch.equal(weights(resumed.path)[name], tensor), name


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- a third training stage is a page of code --------------------------------------------------------------

class CopyTask:
    """A toy objective: predict the token at each position from the same position (a causal model can
    learn to copy its input). Enough to drive the skeleton like a real one."""

    name = "copy"

    def __init__(self, layout, seed, device):
        self.layout, self.seed, self.device = layout, seed, device
        self.train_windows, self.val_windows, self.tokens_per_sample = Count(64), Count(8), 8

    def _tokens(self, start, count):
        generator = torch.Generator().manual_seed(self.seed * 1000 + start)
        return torch.randint(7, 60, (count, 8), generator=generator)

    def train_batch(self, step, micro, rank):
        tokens = self._tokens(self.layout.start(step, micro, rank), self.layout.micro_batch)
        return {"idx": tokens.to(self.device), "targets": tokens.to(self.device)}

    def loss(self, model, batch):
        return model(batch["idx"], batch["targets"])[1]

    @torch.no_grad()
    def evaluate(self, model, max_batches):
        tokens = self._tokens(10**6, 8)
        logits, loss = model(tokens, tokens)
        return {"val_loss": float(loss), "val_accuracy": float((logits.argmax(-1) == tokens).float().mean())}


def test_a_new_objective_and_stage_run_on_the_skeleton(dataset, tmp_path):
    from lmkit.models import build_model
    from lmkit.models.presets import model_config

    spec = ObjectiveSpec("copy", ("gpt",), lambda inputs: Built(CopyTask(inputs.layout, inputs.seed,
                                                                          inputs.device)),
                         "copy the input", metric="val_accuracy")
    register(spec)
    try:
        with pytest.raises(ValueError, match="registered twice"):
            register(spec)

        def plan(options):  # everything a new stage decides; the skeleton does the rest
            env = distributed.setup()
            tokenizer = artifacts.load(dataset / "tokenizer")
            model_cfg = model_config("gpt-tiny", int(tokenizer.stats["vocab_size"]))
            layout = BatchLayout(options.micro_batch, 1, 1)
            start = rundir.start_run(tmp_path / "copy", options, {"options": options.max_steps}, env, model_cfg,
                                     layout, 8)
            inputs = ObjectiveInputs(spec.options_from(options), dataset, tokenizer, model_cfg, 8, layout, env.device,
                                     options.seed)
            return TrainingPlan(options=options, env=env, spec=spec, inputs=inputs, model_config=model_cfg,
                                run_dir=tmp_path / "copy", start=start, parents=[],
                                new_model=lambda built: build_model(model_cfg), step_limit=lambda _: 40,
                                label="copy", metric="val_accuracy")

        options = config(dataset, tmp_path / "copy", max_steps=40, eval_every=10, lr=1e-2)
        final = run_training(plan(options))
        assert final.stats["objective"] == "copy" and final.stats["step"] == 40
        assert final.stats["best_metric"] > 0.5  # it learned to copy
        assert read_checkpoint(final.path).objective == "copy"
        assert run_training(plan(options)).up_to_date
    finally:
        OBJECTIVES.pop("copy")


@pytest.mark.parametrize("micro,accumulation,world,advice", [
    (4, 1, 1, "resume with --accumulation 2 or --batch-tokens 256"),
    (3, 1, 1, r"resume with a --micro-batch x processes that divides 8"),
])
def test_a_resume_with_another_global_batch_names_what_restores_it(micro, accumulation, world, advice):
    from lmkit.training.objectives.base import BatchLayout
    from lmkit.training.rundir import _check_global_batch

    layout = BatchLayout(micro, accumulation, world)
    with pytest.raises(UserError, match=f"run/step-3: was trained with a global batch of 8 sequences per step; "
                                        f"this launch makes {micro} .*{advice}"):
        _check_global_batch(Path("run/step-3"), 8, layout, seq_len=32)
    _check_global_batch(Path("run/step-3"), 8, BatchLayout(2, 2, 2), seq_len=32)  # 8 again: accepted


def test_measuring_the_peak_for_mfu_leaves_the_run_as_it_is(dataset, tmp_path, monkeypatch):
    """The MFU probe draws random matrices: a run that measures it (a cold cache) trains exactly as one that finds
    the figure cached (dropout draws from the same RNG)."""
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    cold = pretrain.run(config(dataset, tmp_path / "cold", max_steps=2, dropout=0.1, threads=1))
    assert "|1|" in next(iter(json.loads((tmp_path / "cache" / "peak-flops.json").read_text())))  # it measured
    warm = pretrain.run(config(dataset, tmp_path / "warm", max_steps=2, dropout=0.1, threads=1))
    for name, tensor in weights(cold.path).items():
        assert torch.equal(tensor, weights(warm.path)[name]), name
