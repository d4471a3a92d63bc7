"""examples/Makefile: stages chained through manifests behave as Make users expect."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(work: Path, *args: str) -> subprocess.CompletedProcess:
    lmkit = f"{sys.executable} -m lmkit"
    return subprocess.run(["make", "-C", str(ROOT / "examples"), f"LMKIT={lmkit}", f"WORK={work}", *args],
                          capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})


@pytest.mark.slow
def test_second_make_does_nothing_and_touch_reruns_dependents(tmp_path):
    work = tmp_path / "work"
    first = make(work, "data")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (work / "data" / "manifest.json").exists() and (work / "labeled" / "manifest.json").exists()

    assert make(work, "-q", "data").returncode == 0  # -q: exit 0 means everything is up to date

    time.sleep(1.1)  # file times must move forward
    (work / "corpus" / "docstrings.jsonl").touch()
    dry = make(work, "-n", "data")
    assert "--out " + str(work / "labeled") in dry.stdout
    assert "--out " + str(work / "data") not in dry.stdout  # only what depends on the touched file
    rerun = make(work, "data")
    assert rerun.returncode == 0 and "up to date" in rerun.stdout  # same content: no work redone
    assert make(work, "-q", "data").returncode == 0


def test_dry_run_plans_every_stage_of_the_demo(tmp_path):
    """`make -n` on an empty work directory resolves the whole graph: every run and report has a rule."""
    work = tmp_path / "work"
    dry = make(work, "-n", "all")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for run in ("gpt", "bert", "bert-classifier", "bert-classifier-scratch", "classifier", "classifier-lora",
                "student", "sft", "chat", "arithmetic", "grpo", "dpo"):
        assert f"--out {work / run} --force" in dry.stdout, run
        assert f"--out {work / 'reports' / run} --force" in dry.stdout, run
    assert "--scratch" in dry.stdout and "--teacher" in dry.stdout and "--lora-rank" in dry.stdout
    assert "--task pass-at-k --reward number" in dry.stdout and "--task preference" in dry.stdout
    assert not work.exists()  # a dry run writes nothing
