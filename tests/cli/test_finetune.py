"""`lmkit finetune` and `lmkit merge-lora` driven as a user drives them: the command line, output, exit codes."""

import json

import pytest

from lmkit import artifacts
from tests.conftest import invoke_lmkit

FAST = ["--max-steps", "4", "--eval-every", "2", "--micro-batch", "8", "--seq-len", "48", "--precision", "fp32"]


def test_classify_prints_its_checkpoint_then_is_up_to_date(bases, labeled, tmp_path):
    args = ["finetune", str(bases["gpt"]), str(labeled), "--out", str(tmp_path / "run"), *FAST]
    first = invoke_lmkit(*args)
    assert first.returncode == 0, first.stderr
    assert "task classify" in first.stdout and "val_accuracy" in first.stdout
    assert "finetune (classify)" in first.stderr and "held out of train" in first.stderr  # notes go to stderr
    final = artifacts.load(tmp_path / "run" / "final")
    second = invoke_lmkit(*args)
    assert second.returncode == 0 and f"up to date (checkpoint {final.id[:12]})" in second.stdout
    assert (tmp_path / "run" / "plots.png").stat().st_size > 0  # the run's curves, drawn at its end


def test_bad_input_is_one_error_line_exit_1_and_nothing_written(bases, dataset, tmp_path):
    result = invoke_lmkit("finetune", str(bases["gpt"]), str(dataset), "--task", "classify", "--out",
                          str(tmp_path / "run"), *FAST)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {dataset}: has no labels; classify needs a labeled dataset (lmkit preprocess "
                      "--label-field NAME)"]
    assert not (tmp_path / "run").exists()


def test_find_lr_prints_a_suggestion(bases, labeled, tmp_path):
    result = invoke_lmkit("finetune", str(bases["gpt"]), str(labeled), "--out", str(tmp_path / "run"), "--find-lr",
                          "--find-lr-steps", "20", "--seq-len", "48")
    assert result.returncode == 0, result.stderr
    assert "suggested --lr" in result.stdout
    saved = json.loads((tmp_path / "run" / "lr-find.json").read_text())
    assert len(saved["lr"]) == len(saved["loss"]) >= 3 and saved["suggestion"] > 0


def test_merge_lora_refuses_a_checkpoint_without_adapters(bases, tmp_path):
    result = invoke_lmkit("merge-lora", str(bases["gpt"]), "--out", str(tmp_path / "merged"))
    assert result.returncode == 1
    assert "has no unmerged LoRA adapters" in result.stderr and not (tmp_path / "merged").exists()


def test_a_pair_classifier_is_finetuned_evaluated_and_used_on_pairs(bases, pair_dataset, pair_classifier, tmp_path):
    final = pair_classifier  # finetuned in-process by the fixture; the CLI's finetune is the same stage
    head = json.loads((final / "model.json").read_text())["head"]
    assert head["pairs"] is True and head["labels"] == ["other", "same"]
    result = invoke_lmkit("evaluate", str(final), str(pair_dataset), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["examples"] == artifacts.load(pair_dataset).stats["splits"]["validation"]["documents"]
    assert 0 <= report["metrics"]["accuracy"] <= 1 and report["method"]["framing"] == "[CLS] text [SEP] pair [SEP]"
    result = invoke_lmkit("generate", str(final), "The first text.", "--text-pair", "The second text.")
    assert result.returncode == 0, result.stderr
    assert "text_pair" in result.stdout and "The second text." in result.stdout and "p(same)" in result.stdout
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "a", "text_pair": "b", "id": 7}) + "\n")
    result = invoke_lmkit("generate", str(final), "--input", str(tmp_path / "in.jsonl"))
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["id"] == 7 and record["label"] in head["labels"] and list(record["probabilities"]) == head["labels"]
    # Refused, one line each: a lone text for a pair classifier, and chunking a pair.
    result = invoke_lmkit("generate", str(final), "The first text.")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        f"error: PROMPT alone: {final} classifies pairs of texts; give PROMPT with --text-pair, or --input "
        "JSONL records with \"text\" and \"text_pair\"")
    from lmkit.config import resolve
    from lmkit.errors import UserError
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    values = {"base": str(bases["bert"]), "data": str(pair_dataset), "out": str(tmp_path / "chunked"),
              "long_text": "mean", "max_steps": 2}
    with pytest.raises(UserError, match="--long-text mean: reads one long text as windows; a pair of texts is cut to "
                                        "the window longest text first \\(use --long-text cut\\)"):
        finetune.run(resolve(FinetuneConfig, {}, values))
    assert not (tmp_path / "chunked").exists()


def test_options_of_another_task_from_flags_or_the_config_file_are_one_error_line(bases, instructions, tmp_path):
    from typer.testing import CliRunner

    from lmkit.cli import app

    (tmp_path / "finetune.toml").write_text('task = "sft"\nclass_weights = "balanced"\n')
    result = CliRunner().invoke(app, ["finetune", str(bases["gpt"]), str(instructions), "--out", str(tmp_path / "run"),
                                      "--config", str(tmp_path / "finetune.toml"), "--pooling", "last", *FAST])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == ("error: --pooling and --class-weights: read by --task classify, not by --task "
                                     "sft; drop them")
    assert not (tmp_path / "run").exists()
