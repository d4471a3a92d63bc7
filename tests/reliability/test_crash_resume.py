"""Crash and resume: kill -9 at random moments (including mid-checkpoint), SIGTERM at random
moments, a full disk while saving. Each time the run continues from a committed checkpoint and
ends exactly where an uninterrupted run ends."""

import errno
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training import rundir
from lmkit.training.objectives.language_modeling import CausalLM
from tests.conftest import run_lmkit

STEPS = 400  # long enough that 20 kills (a few steps of progress each) come before the end
ARGS = ["--seq-len", "32", "--micro-batch", "4", "--eval-every", "0", "--checkpoint-every", "1",
        "--keep-last", "2", "--precision", "fp32", "--log-every", "1", "--threads", "1", "--dropout", "0.1",
        "--max-steps", str(STEPS)]


def committed(run_dir):
    return sorted(p for p in run_dir.glob("step-*") if (p / "manifest.json").is_file())


def latest_step(run_dir):
    """The newest committed step while a run may be going: a checkpoint it prunes between the listing
    and the read is skipped (the step names order them, so no manifest needs reading)."""
    return max((int(p.name.removeprefix("step-")) for p in committed(run_dir)), default=-1)


def weights(path):
    return read_checkpoint(path).build_model().state_dict()


@pytest.mark.slow
def test_kill_9_twenty_times_then_finish_equals_uninterrupted(dataset, tmp_path):
    reference = tmp_path / "reference"
    run_lmkit("pretrain", str(dataset), "--out", str(reference), *ARGS, check=True)

    run_dir = tmp_path / "crashy"
    rng = random.Random(0)
    kills = mid_write = 0
    while kills < 20:
        resume = ["--resume"] if committed(run_dir) else ["--force"]
        before = latest_step(run_dir)
        process = subprocess.Popen([sys.executable, "-m", "lmkit", "pretrain", str(dataset), "--out", str(run_dir),
                                    *ARGS, *resume], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while latest_step(run_dir) <= before and process.poll() is None and time.time() < deadline:
            time.sleep(0.01)  # wait for progress: every kill lands in a run that is saving every step
        time.sleep(rng.uniform(0.0, 0.15))
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read().decode()[-2000:]
            break  # it finished before the 20th kill: the assertion below reports it
        process.kill()
        process.wait()
        kills += 1
        mid_write += bool(list(run_dir.glob(".step-*.tmp-*")) or list(run_dir.glob(".final.tmp-*")))
        for checkpoint in committed(run_dir):  # a temporary directory is never taken for an artifact
            artifacts.load(checkpoint)
    assert kills >= 20
    run_lmkit("pretrain", str(dataset), "--out", str(run_dir), *ARGS, "--resume", check=True)
    final = artifacts.load(run_dir / "final")
    assert final.stats["step"] == STEPS
    ref, got = weights(reference / "final"), weights(run_dir / "final")
    assert all(torch.equal(ref[name], got[name]) for name in ref)
    print(f"kill -9: {kills} kills survived, {mid_write} of them left a checkpoint half-written")


@pytest.mark.slow
def test_sigterm_at_random_moments_leaves_a_valid_checkpoint(dataset, tmp_path):
    run_dir = tmp_path / "run"
    rng = random.Random(1)
    for _ in range(5):
        resume = ["--resume"] if committed(run_dir) else ["--force"]
        before = latest_step(run_dir)
        process = subprocess.Popen([sys.executable, "-m", "lmkit", "pretrain", str(dataset), "--out", str(run_dir),
                                    *ARGS, "--max-steps", "100000", *resume], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        while latest_step(run_dir) <= before and process.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))  # mostly lands while a checkpoint is being written
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 143, stderr[-2000:]
        assert not list(run_dir.glob(".*tmp-*"))
        newest = committed(run_dir)[-1]
        assert f"resume with --resume ({newest})" in stderr
        artifacts.load(newest)


def test_disk_full_while_saving_keeps_earlier_checkpoints(dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = rundir.write_checkpoint

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(rundir, "write_checkpoint", full_disk)
    values = {"dataset": str(dataset), "out": str(tmp_path / "run"), "seq_len": 32, "micro_batch": 4,
              "max_steps": 4, "eval_every": 0, "checkpoint_every": 2, "precision": "fp32"}
    with pytest.raises(UserError, match=r"step-00000004: no space left on device .* earlier checkpoints are intact"):
        pretrain.run(resolve(PretrainConfig, {}, values))
    assert [p.name for p in committed(tmp_path / "run")] == ["step-00000002"]
    artifacts.load(tmp_path / "run" / "step-00000002")
    assert not list((tmp_path / "run").glob(".*tmp-*"))


@pytest.mark.parametrize("where", ["during a step", "during a save"])
def test_sigterm_in_a_step_or_a_save_gives_one_valid_checkpoint(dataset, tmp_path, monkeypatch, where):
    import os

    from lmkit.errors import Interrupted

    def send_sigterm_once(real):
        sent = {"done": False}

        def wrapper(*args, **kwargs):
            if not sent["done"]:
                sent["done"] = True
                os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of this call
            return real(*args, **kwargs)
        return wrapper

    if where == "during a step":
        monkeypatch.setattr(CausalLM, "loss", send_sigterm_once(CausalLM.loss))
    else:
        monkeypatch.setattr(rundir, "write_checkpoint", send_sigterm_once(rundir.write_checkpoint))
    values = {"dataset": str(dataset), "out": str(tmp_path / "run"), "seq_len": 32, "micro_batch": 4,
              "max_steps": 50, "eval_every": 0, "checkpoint_every": 3, "precision": "fp32"}
    with pytest.raises(Interrupted) as info:
        pretrain.run(resolve(PretrainConfig, {}, values))
    assert info.value.exit_code == 143
    (checkpoint,) = committed(tmp_path / "run")
    expected_step = 1 if where == "during a step" else 3  # the step it was in, or the save it was in
    assert artifacts.load(checkpoint).stats["step"] == expected_step
    assert not list((tmp_path / "run").glob(".*tmp-*"))
