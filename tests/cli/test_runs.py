"""`lmkit runs DIR`: the runs under a directory tabled (the settings that differ, final figures) and chosen
metrics of them plotted on one chart, through the real CLI in-process on tiny real runs."""

import json

import pytest

from tests.conftest import invoke_lmkit, train_tiny


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train_tiny(dataset, root / "fast", lr=3e-3, max_steps=4, log_every=1, eval_every=2, eval_batches=2)
    train_tiny(dataset, root / "slow", lr=1e-4, max_steps=4, log_every=1, eval_every=2, eval_batches=2)
    return root


def test_runs_tables_the_settings_that_differ_and_the_final_figures(runs):
    result = invoke_lmkit("runs", str(runs), env={"COLUMNS": "250"}, check=True)
    header = next(line for line in result.stdout.splitlines() if "settings that differ" in line)
    assert header.strip().endswith("settings that differ: lr")  # not out, seed or the rest
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {"fast", "slow"}
    fast = rows["fast"]
    last = [json.loads(line) for line in (runs / "fast" / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in last if "loss" in r][-1]
    val_loss = [r["val_loss"] for r in last if "val_loss" in r][-1]
    assert fast[:4] == ["0.003", "final", "4", "512"]  # lr, state, steps, tokens (4 steps of 4 x 32)
    assert f"{loss:.4g}" in fast and f"{val_loss:.4g}" in fast


def test_runs_plots_chosen_metrics_of_every_run(runs, tmp_path):
    out = tmp_path / "compare.png"
    result = invoke_lmkit("runs", str(runs), "--plot", "loss,val_loss", "--out", str(out), check=True)
    assert f"{out}: loss, val_loss of 2 run(s)" in result.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--plot", "loss"], "--out: required with --plot (e.g. --out compare.png)"),
    (["--plot", "los", "--out", "x.png"], "--plot: los not logged by any run under"),
    (["--plot", "loss", "--out", "x.jpg"], "--out x.jpg: must be a .png file"),
    (["--out", "x.png"], "--out: only with --plot"),
])
def test_runs_refuses_bad_flags_in_one_line(runs, tmp_path, args, message):
    result = invoke_lmkit("runs", str(runs), *args, cwd=tmp_path)
    assert result.returncode == 1 and message in result.stderr
    assert list(tmp_path.iterdir()) == []  # no picture half-written


def test_runs_of_a_directory_without_runs_says_so(tmp_path):
    result = invoke_lmkit("runs", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}: no run directories under it" in result.stderr


def test_runs_differing_in_many_settings_list_them_per_run(runs, monkeypatch):
    from lmkit.cli import runs as runs_command

    monkeypatch.setattr(runs_command, "WIDE_COLUMNS", 0)  # as a whole pipeline's runs would: too many to be columns
    result = invoke_lmkit("runs", str(runs), env={"COLUMNS": "200"}, check=True)
    assert "settings that differ: 1, in the settings column" in " ".join(result.stdout.split())  # the title wraps
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ fast") or line.startswith("│ slow")]
    assert len(rows) == 2 and "lr=0.003" in rows[0] and "val_loss " in rows[0] and "lr=0.0001" in rows[1]


def test_a_setting_differs_when_its_runs_disagree_or_one_run_alone_has_it():
    from types import SimpleNamespace

    from lmkit.training.compare import differing_settings

    runs = [SimpleNamespace(config={"lr": 1e-3, "seed": 0}),  # a pretraining run
            SimpleNamespace(config={"lr": 1e-3, "seed": 0, "task": "sft", "lora_alpha": 16.0}),
            SimpleNamespace(config={"lr": 2e-3, "seed": 0, "task": "sft", "lora_alpha": 16.0,
                                    "teacher": "t/final", "out": "elsewhere"})]
    # finetuning's shared default (lora_alpha) is no difference; --out never is
    assert differing_settings(runs) == ["lr", "teacher"]
