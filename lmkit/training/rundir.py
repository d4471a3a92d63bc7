"""Run directories of training stages (pretrain, finetune): what is in them, resuming, saving.

A run directory holds checkpoint artifacts ``step-XXXXXXXX/`` (the last ``--keep-last`` and the
best by the validation metric) and ``final/``, plus ``metrics.jsonl`` and ``config.toml``. Every
check happens before the directory is touched: a refused run loses nothing.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lmkit import artifacts
from lmkit import config as config_lib
from lmkit.checkpoint import TrainerState, read_checkpoint
from lmkit.config import flag_name
from lmkit.errors import UserError
from lmkit.models import build_model
from lmkit.models.config import ModelConfig
from lmkit.training import distributed
from lmkit.training.checkpoint import step_tag, write_checkpoint

CHECKPOINT_PREFIX = "step-"
FINAL = "final"
TRACKED_FILE = "tracked.json"  # the trackers that got a finished run's end (run.finish_tracking)
# Identity keys that name a run's training data and base (artifact ids, a file's hash): a resumed run must
# keep them (new data changes what a step reads; a classifier's labels may not even fit).
INPUT_KEYS = ("dataset", "data", "base")
INPUT_FLAGS = {"dataset": "DATASET", "data": "DATA", "base": "BASE"}


def checkpoints(run_dir: Path) -> list[Path]:
    """Committed checkpoints of a run (a directory with a manifest), oldest step first."""
    found = [p for p in run_dir.iterdir() if p.is_dir() and (p / artifacts.MANIFEST).is_file()
             and (p.name.startswith(CHECKPOINT_PREFIX) or p.name == FINAL)]
    # Sorting reads manifests only; the chosen checkpoint is verified in full when it is loaded.
    return sorted(found, key=lambda p: (artifacts.read_manifest(p)["stats"].get("step", -1), p.name == FINAL))


@dataclasses.dataclass(frozen=True)
class RunStart:
    """How a launch of a training stage begins: from scratch or from a checkpoint, and under which recipe."""

    recipe: str                      # the final checkpoint's recipe: the settings and, when resumed, their history
    resume_from: Path | None         # the checkpoint to continue from
    launch: dict[str, Any]           # this launch's identity (settings and input ids), kept in every checkpoint
    history: list[dict[str, Any]]    # earlier launches of the run whose settings differed: {"until_step", "settings"}
    fresh: bool                      # start over: --force, or --auto-resume on a run without a checkpoint
    resumed_launch: dict[str, Any] | None = None  # the identity of the launch that wrote the resumed checkpoint


# Settings that only lay a step's global batch out over processes and micro-batches: a resume may change them
# (elastic resume) as long as the global batch stays the same.
LAYOUT_SETTINGS = ("micro_batch", "accumulation", "batch_tokens", "shard")


def resume_invariants(options: Any) -> tuple[str, ...]:
    """The settings a resumed run must keep: the fields of a stage's config declared with ``resume=True``
    (what fixes the run's data order and model; limits and rates may change and are recorded)."""
    return tuple(f.name for f in dataclasses.fields(options) if f.metadata.get("resume"))


def start_run(run_dir: Path, options: Any, identity: dict[str, Any], env: distributed.Distributed,
              model_cfg: ModelConfig, layout: Any, seq_len: int) -> RunStart:
    """Refuse to clobber a run; find the checkpoint to resume from (the latest saved with its optimizer
    state), checking that the settings marked ``resume`` (:func:`resume_invariants`), the inputs and the
    model did not change.

    Elastic resume: a run may continue on another number of processes, micro-batch or accumulation when the
    global batch (sequences per optimizer step, ``layout.global_batch``) is the one it was trained with: every
    sample's data and masks depend on its global position only, and checkpoints hold full (gathered) state.

    A resumed run's recipe is its settings plus the settings of every earlier launch that differed
    (a run trained 6 steps and resumed to 12 is not a 12-step run), so "up to date" stays honest and
    a changed --lr on resume is recorded in the checkpoints rather than lost.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is a file; --out must be a directory")
    if any(parent.exists() and not parent.is_dir() for parent in run_dir.parents):
        raise UserError(f"{run_dir}: a parent of --out is a file, not a directory")
    existing = checkpoints(run_dir) if run_dir.is_dir() else []
    fresh_recipe = artifacts.make_recipe("checkpoint", identity, [], [])
    candidates = [path for path in existing if resumable(path)]
    if options.resume and not candidates:
        hint = ("start it again with --force" if run_dir.is_dir() and any(run_dir.iterdir())
                else "run without --resume to start it, or use --auto-resume")
        raise UserError(f"{run_dir}: no checkpoint to resume from ({hint})")
    if options.resuming and candidates:
        latest = candidates[-1]
        checkpoint = read_checkpoint(latest)
        saved = checkpoint.trainer_state()
        invariants = resume_invariants(options)
        if saved.global_batch:
            _check_global_batch(latest, saved.global_batch, layout, seq_len)
            invariants = tuple(name for name in invariants if name not in LAYOUT_SETTINGS)
        elif saved.world_size != env.world_size:  # written before elastic resume: the same layout only
            raise UserError(f"{latest}: was trained on {saved.world_size} process(es); resume with the same number "
                            f"(now {env.world_size})")
        changed = [flag_name(name) for name in invariants
                   if checkpoint.artifact.config.get(name) != getattr(options, name)]
        if checkpoint.model_config != model_cfg:
            changed.append("the model (--model and its overrides)")
        if changed:
            raise UserError(f"{latest}: cannot resume with a different {', '.join(changed)}; "
                            "use the run's settings (see its config.toml) or --force to start over")
        history = list(saved.extra.get("history", []))
        launch = saved.extra.get("launch", identity)  # checkpoints of older lmkit versions: assume unchanged
        inputs = [key for key in INPUT_KEYS if launch.get(key) != identity.get(key)]
        if inputs:
            raise UserError(f"{latest}: cannot resume on other inputs ({', '.join(inputs)} changed: "
                            f"{', '.join(INPUT_FLAGS[key] for key in inputs)}); use the run's inputs, or start a new "
                            "run from its weights (--init-from, or finetune it)")
        if launch != identity:
            history.append({"until_step": saved.step, "settings": launch})
        recipe = (artifacts.make_recipe("checkpoint", {**identity, "history": history}, [], []) if history
                  else fresh_recipe)
        return RunStart(recipe, latest, identity, history, fresh=False, resumed_launch=launch)
    if up_to_date(run_dir, fresh_recipe):
        return RunStart(fresh_recipe, None, identity, [], fresh=False)  # "up to date", with or without --force
    holds_run = bool(existing) or (run_dir / "metrics.jsonl").exists()
    if holds_run and candidates and not options.force:
        raise UserError(f"{run_dir}: already holds a run; use --resume to continue it or --force to start over")
    if holds_run and not candidates and not (options.force or options.auto_resume):
        raise UserError(f"{run_dir}: already holds a run without a checkpoint to resume; use --force (or "
                        "--auto-resume) to start over")
    return RunStart(fresh_recipe, None, identity, [], fresh=True)


def _check_global_batch(checkpoint: Path, saved: int, layout: Any, seq_len: int) -> None:
    """Refuse a resume whose global batch differs from the checkpoint's, naming the flag that restores it."""
    if saved == layout.global_batch:
        return
    per_step = layout.micro_batch * layout.world_size
    # --batch-tokens holds the global batch on any number of processes
    how = (f"--accumulation {saved // per_step} or --batch-tokens {saved * seq_len}" if saved % per_step == 0 else
           f"a --micro-batch x processes that divides {saved}")
    raise UserError(f"{checkpoint}: was trained with a global batch of {saved} sequences per step; this launch makes "
                    f"{layout.global_batch} ({layout.micro_batch} x {layout.accumulation} accumulation x "
                    f"{layout.world_size} process(es)): resume with {how}")


def changed_settings(earlier: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The settings of an earlier launch that differ from ``now``'s: {name: earlier value}."""
    return {key: value for key, value in earlier.items() if now.get(key) != value}


def resumable(checkpoint: Path) -> bool:
    """Whether a run can continue from this checkpoint: it was saved with the optimizer state that goes with
    its weights. Not so a final/ of merged LoRA weights, or of the best step's weights (--final best)."""
    return artifacts.read_manifest(checkpoint)["stats"].get("resumable", True)  # older lmkit: always saved it


def up_to_date(run_dir: Path, recipe: str) -> bool:
    final = run_dir / FINAL
    return (final / artifacts.MANIFEST).is_file() and artifacts.read_manifest(final).get("recipe") == recipe


def existing_final(run_dir: Path) -> artifacts.Artifact:
    """The up-to-date final checkpoint, its manifest's time refreshed for Make."""
    existing = artifacts.load(run_dir / FINAL)
    existing.up_to_date = True
    os.utime(existing.path / artifacts.MANIFEST)
    return existing


def prepare(run_dir: Path, config: Any, env: distributed.Distributed, fresh: bool) -> None:
    """Once every input is read and checked: make the directory, clear an earlier run when starting
    fresh over one (--force, or --auto-resume over a run that left no checkpoint), write config.toml."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{run_dir}: not writable ({exc.strerror}) (--out)") from None
    if fresh and env.is_main and run_dir.is_dir():  # rank 0 deletes, all wait
        for path in run_dir.iterdir():
            if path.name.startswith((CHECKPOINT_PREFIX, FINAL, ".trash-")) or path.name == "metrics.jsonl":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    distributed.barrier(env)
    if env.is_main:
        (run_dir / "config.toml").write_text(config_lib.to_toml(config))
        (run_dir / TRACKED_FILE).unlink(missing_ok=True)  # a launch that trains: no tracker has its end yet


def tracked(run_dir: Path) -> set[str]:
    """The trackers (--track) that got this run's end: its last metrics, final artifacts and close."""
    try:
        return set(json.loads((run_dir / TRACKED_FILE).read_text())["finished"])
    except (OSError, ValueError, KeyError):
        return set()


def mark_tracked(run_dir: Path, names: list[str]) -> None:
    temporary = run_dir / f".{TRACKED_FILE}.tmp"
    temporary.write_text(json.dumps({"finished": sorted(tracked(run_dir) | set(names))}) + "\n")
    os.replace(temporary, run_dir / TRACKED_FILE)


@dataclasses.dataclass
class CheckpointSaver:
    """Commits checkpoints of one run: rank 0 writes, every rank waits; old step checkpoints are pruned."""

    run_dir: Path
    recipe: str                      # the final checkpoint's recipe (step checkpoints derive theirs)
    config: Any                      # the stage's config dataclass (saved in each manifest)
    model_config: ModelConfig
    objective: str
    tokenizer: artifacts.Artifact
    parents: list[tuple[str, artifacts.Artifact]]
    stats: dict[str, Any]            # what every checkpoint of the run reports besides its progress
    env: distributed.Distributed
    extra: dict[str, Any] | None = None   # model.json additions (head, template, lora)
    sharded: bool = False

    def save(self, tag: str, model: torch.nn.Module, optimizers, state: TrainerState,
             extra: dict[str, Any] | None = None) -> Path:
        """Commit checkpoint ``tag``; ``optimizers`` None writes no optimizer state (not resumable)."""
        path = self.run_dir / tag
        if self.sharded:  # gather the full weights and optimizer state: every rank takes part
            full_weights = distributed.full_model_state(model)
            full_optimizer = distributed.full_optimizer_states(model, optimizers)
            if self.env.is_main:  # (the other ranks receive empty dicts)
                optimizer_state = optimizers.state_tensors(full_optimizer)
                with torch.random.fork_rng(devices=[]):  # building must not consume the RNG being saved
                    model = build_model(self.model_config)
                model.load_state_dict(full_weights)
        elif optimizers is None:
            optimizer_state = ({}, {"optimizers": [], "keys": "index"})
        else:
            optimizer_state = optimizers.state_tensors() if self.env.is_main else None
        failure: BaseException | None = None
        if self.env.is_main:
            try:
                self._write(path, tag, model, optimizer_state, state, self.extra if extra is None else extra,
                            resumable=optimizers is not None)
            except BaseException as exc:  # every rank must learn of it, or they wait for rank 0 forever
                failure = exc
        if distributed.any_rank(failure is not None, self.env):
            if failure is not None:
                raise failure
            raise UserError(f"{path}: rank 0 could not save this checkpoint (its error is in rank 0's output)")
        distributed.barrier(self.env)
        return path

    def _write(self, path: Path, tag: str, model, optimizer_state, state: TrainerState, extra,
               resumable: bool) -> None:
        recipe = self.recipe if tag == FINAL else artifacts.make_recipe(
            "checkpoint", {"run": self.recipe, "step": state.step}, [], [])
        try:
            with artifacts.ArtifactWriter(path, "checkpoint", recipe, force=True) as writer:
                if not writer.up_to_date:
                    version = write_checkpoint(writer.tmp, model, self.model_config, self.objective,
                                               optimizer_state, state, self.tokenizer, extra)
                    parents = [artifacts.describe_parent(role, parent, path) for role, parent in self.parents]
                    parents.append({"role": "tokenizer", "path": "tokenizer", "id": self.tokenizer.id})
                    stats = {**self.stats, "step": state.step, "tokens": state.tokens, "best_step": state.best_step,
                             "best_metric": state.best_metric, "resumable": resumable}
                    history = state.extra.get("history")
                    if history:  # earlier launches' settings that differ from this one's: what the recipe holds
                        stats["history"] = [{"until_step": h["until_step"],
                                             "changed": changed_settings(h["settings"], state.extra["launch"])}
                                            for h in history]
                    writer.commit(config_lib.as_dict(self.config), {"artifacts": parents, "files": []}, stats,
                                  version)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(f"{path}: no space left on device while saving the checkpoint at step {state.step}; "
                                "nothing partial was left and earlier checkpoints are intact") from None
            raise
        _prune(self.run_dir, self.config.keep_last, state.best_step)


def write_plot(run_dir: Path, env: distributed.Distributed) -> None:
    """RUN/plots.png (the run's curves, as ``lmkit plot`` draws them) at the end of a run, on rank 0;
    quietly skipped when matplotlib is not installed."""
    if env.is_main:
        from lmkit.plotting import plot_run_end

        plot_run_end(run_dir)


def _prune(run_dir: Path, keep_last: int, best_step: int | None) -> None:
    steps = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
    keep = set(steps[-keep_last:])
    if best_step is not None:
        keep.add(run_dir / step_tag(best_step))
    for path in steps:
        if path not in keep:
            trash = path.with_name(f".trash-{path.name}")
            path.rename(trash)  # out of sight atomically, then removed
            shutil.rmtree(trash)
            path.with_name(f".{path.name}.lock").unlink(missing_ok=True)
