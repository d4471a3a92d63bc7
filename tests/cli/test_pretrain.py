"""`lmkit pretrain` as a user runs it: signals, exit codes, resume from the CLI, torchrun."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lmkit import artifacts
from tests.conftest import free_port, invoke_lmkit

# A free port for torchrun's rendezvous, so that runs of the suite side by side (pytest -n) do not collide.
PORT = str(free_port())
ARGS = ["--seq-len", "32", "--micro-batch", "4", "--eval-every", "0", "--checkpoint-every", "0",
        "--precision", "fp32", "--log-every", "1", "--threads", "1"]


def start(dataset, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "lmkit", "pretrain", str(dataset), "--out", str(out),
                             "--max-steps", "100000", *ARGS, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir, step, process, timeout=60):
    deadline = time.time() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()
                                    if line.strip()):
            return
        time.sleep(0.05)
    raise AssertionError(f"training never reached step {step}: {process.stderr.read() if process.poll() else ''}")


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_then_resume_continues(dataset, tmp_path, signum, code):
    run_dir = tmp_path / "run"
    process = start(dataset, run_dir)
    wait_for_step(run_dir, 3, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    (checkpoint,) = run_dir.glob("step-*")
    saved = artifacts.load(checkpoint).stats["step"]
    assert saved >= 3 and "resume with --resume" in stderr
    assert not list(run_dir.glob(".*tmp-*"))
    resumed = invoke_lmkit("pretrain", str(dataset), "--out", str(run_dir), "--max-steps", str(saved + 2), *ARGS,
                           "--resume", check=True)
    assert f"resuming from {checkpoint}" in resumed.stderr
    assert artifacts.load(run_dir / "final").stats["step"] == saved + 2


def test_second_ctrl_c_stops_at_once_without_partial_checkpoint(dataset, tmp_path):
    run_dir = tmp_path / "run"
    process = start(dataset, run_dir, "--model", "gpt-small", "--micro-batch", "16")  # slow steps
    wait_for_step(run_dir, 1, process)
    process.send_signal(signal.SIGINT)
    seen = ""
    while "saving a checkpoint after this step" not in seen:  # the first Ctrl-C was heard
        line = process.stderr.readline()
        assert line, "the process ended before acknowledging Ctrl-C"
        seen += line
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 130, seen + rest
    assert "stopped at step" not in rest  # it did not wait for the end of the step to save
    assert "no partial artifact was left" in rest
    assert not list(run_dir.glob(".*tmp-*")) and not list(run_dir.glob("step-*"))


def test_existing_run_without_resume_is_refused(dataset, tmp_path):
    args = ["pretrain", str(dataset), "--out", str(tmp_path / "run"), "--max-steps", "2", *ARGS]
    invoke_lmkit(*args, check=True)
    again = invoke_lmkit(*args[:-len(ARGS) - 1], "3", *ARGS)
    assert again.returncode == 1 and "already holds a run" in again.stderr
    assert "up to date" in invoke_lmkit(*args, check=True).stdout


@pytest.mark.slow
@pytest.mark.parametrize("model", ["gpt-tiny", "bert-tiny"])  # bert: masked counts differ per micro-batch
def test_torchrun_two_processes_match_one_process(dataset, tmp_path, model):
    common = ["pretrain", str(dataset), "--max-steps", "8", *ARGS, "--model", model]
    single = invoke_lmkit(*common, "--out", str(tmp_path / "one"), "--batch-tokens", "256", "--checkpoint-every", "4",
                          check=True)
    assert "2 accumulation, 1 process(es)" in single.stderr
    result = under_torchrun(2, PORT, *common, "--out", str(tmp_path / "two"))
    assert "1 accumulation, 2 process(es)" in result.stderr
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 8
    assert one == pytest.approx(two, rel=1e-4, abs=1e-4)
    assert artifacts.load(tmp_path / "two" / "final").stats["step"] == 8
    if model != "bert-tiny":  # (one architecture is enough here: tests/stages/test_pretrain.py covers both)
        return
    # elastic resume: the one-process run's step 4 continues on two processes (the same global batch; masked
    # LM, whose masks must not depend on how a step's samples are laid out)
    (tmp_path / "grown").mkdir()
    shutil.copytree(tmp_path / "one" / "step-00000004", tmp_path / "grown" / "step-00000004")
    under_torchrun(2, PORT, *common, "--out", str(tmp_path / "grown"), "--resume")
    assert losses(tmp_path / "grown") == pytest.approx(one[4:], rel=1e-4, abs=1e-4)


def under_torchrun(processes: int, port, *args: str) -> subprocess.CompletedProcess:
    """``lmkit ARGS`` under torchrun with ``processes`` processes on this machine; it must succeed."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                             "--master_port", str(port), "-m", "lmkit", *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(run) -> list[float]:
    """The training losses a run logged, step by step."""
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


@pytest.mark.slow
def test_fsdp2_shard_matches_one_process_and_resumes_exactly(dataset, tmp_path):
    common = ["pretrain", str(dataset), "--max-steps", "6", *ARGS, "--checkpoint-every", "3"]
    invoke_lmkit(*common, "--out", str(tmp_path / "one"), "--batch-tokens", "256", check=True)

    def torchrun(out, *extra):
        return under_torchrun(2, PORT, *common, "--out", str(out), "--shard", *extra)

    sharded = torchrun(tmp_path / "two")
    assert sharded.stdout.count("checkpoint ") == 1  # only rank 0 prints results
    assert losses(tmp_path / "one") == pytest.approx(losses(tmp_path / "two"), rel=1e-4, abs=1e-4)
    # the gathered checkpoint is a plain one; resuming sharded from step 3 ends where the full run ended
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "two" / "step-00000003", partial / "step-00000003")
    torchrun(partial, "--resume")
    assert losses(partial) == losses(tmp_path / "two")[3:]
    # elastic resume: the two-process sharded checkpoint continues in one process, unsharded, once the global
    # batch is the same (8 sequences: --batch-tokens 256 makes it 2 micro-batches of 4)
    single = tmp_path / "single"
    single.mkdir()
    shutil.copytree(tmp_path / "two" / "step-00000003", single / "step-00000003")
    # (without --batch-tokens the global batch would be 4: refused, as tests/stages/test_pretrain.py checks)
    invoke_lmkit(*common, "--out", str(single), "--resume", "--batch-tokens", "256", check=True)
    assert losses(single) == pytest.approx(losses(tmp_path / "two")[3:], rel=1e-4, abs=1e-4)
    # and the other way: the one-process (unsharded, index-keyed optimizer state) run's step 3, sharded on two
    sharded_again = tmp_path / "sharded-again"
    sharded_again.mkdir()
    shutil.copytree(tmp_path / "one" / "step-00000003", sharded_again / "step-00000003")
    torchrun(sharded_again, "--resume")
    assert losses(sharded_again) == pytest.approx(losses(tmp_path / "one")[3:], rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_fsdp2_on_one_process_under_torchrun_trains_as_unsharded_and_resumes(dataset, tmp_path):
    """What a machine of one GPU can check of --shard (benchmarks/gpu.sh does it there): a group of one process."""
    common = ["pretrain", str(dataset), "--max-steps", "6", *ARGS, "--checkpoint-every", "3"]
    invoke_lmkit(*common, "--out", str(tmp_path / "plain"), check=True)

    def torchrun(out, *extra):
        return under_torchrun(1, free_port(), *common, "--out", str(out), "--shard", *extra)

    torchrun(tmp_path / "sharded")
    assert losses(tmp_path / "sharded") == pytest.approx(losses(tmp_path / "plain"), rel=1e-4, abs=1e-4)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tmp_path / "sharded" / "step-00000003", resumed / "step-00000003")
    torchrun(resumed, "--resume")
    assert losses(resumed) == losses(tmp_path / "sharded")[3:]


@pytest.mark.slow
def test_a_save_failing_on_rank_0_stops_every_rank(dataset, tmp_path):
    import fcntl
    import os

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock = os.open(run_dir / ".step-00000002.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # as if another lmkit process were writing that checkpoint
    try:
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", PORT, "-m", "lmkit", "pretrain", str(dataset), "--out",
                                 str(run_dir), "--max-steps", "4", *ARGS, "--checkpoint-every", "2"],
                                capture_output=True, text=True, timeout=120)  # a hang would time out here
    finally:
        os.close(lock)
    assert result.returncode != 0
    assert "another lmkit process is writing" in result.stderr
    assert not (run_dir / "final").exists()
