"""`lmkit evaluate` as CI runs it: exit codes of the gate, refusals, tables, --compare, the harness."""

import json

import pytest
from typer.testing import CliRunner

from lmkit.cli import app
from tests.conftest import invoke_lmkit, run_lmkit
from tests.evaluation.helpers import classifier_checkpoint, labeled_dataset

runner = CliRunner()
FAST = ["--precision", "fp32", "--batch-size", "8"]


def test_a_held_condition_exits_3_naming_it_and_the_report_is_kept(gpt, dataset, tmp_path):
    out = tmp_path / "report"
    result = run_lmkit("evaluate", str(gpt), str(dataset), "--out", str(out), *FAST, "--fail-if", "bpb>0.5")
    assert result.returncode == 3, result.stderr
    assert "error: --fail-if 'bpb>0.5' holds: bpb = " in result.stderr
    assert "bpb" in result.stdout and (out / "report.json").exists()  # the table, and the report, all the same
    passing = run_lmkit("evaluate", str(gpt), str(dataset), "--out", str(out), *FAST, "--fail-if", "bpb>1000")
    assert passing.returncode == 0 and "up to date" in passing.stdout


def test_repeated_and_combined_conditions_all_count(gpt, dataset):
    # The first condition holds: a repeated flag must not drop it.
    result = invoke_lmkit("evaluate", str(gpt), str(dataset), *FAST, "--limit", "3", "--fail-if", "loss>0",
                          "--fail-if", "bpb>1000 and ppl<0")
    assert result.returncode == 3 and "error: --fail-if 'loss>0' holds" in result.stderr
    assert "'bpb>1000'" not in result.stderr and "'ppl<0'" not in result.stderr


def test_a_condition_that_does_not_parse_exits_1_before_any_work(gpt, dataset, tmp_path):
    result = invoke_lmkit("evaluate", str(gpt), str(dataset), "--out", str(tmp_path / "r"), "--fail-if",
                          "accuracy=>0.8", "--fail-if", "bpb>1.2")
    assert result.returncode == 1
    assert "error: --fail-if 'accuracy=>0.8': does not parse; write NAME OP NUMBER" in result.stderr
    assert not (tmp_path / "r").exists()


def test_unknown_metric_and_a_gate_on_a_missing_metric_exit_1(gpt, dataset):
    unknown = invoke_lmkit("evaluate", str(gpt), str(dataset), "--metrics", "bpb,perplexity")
    assert unknown.returncode == 1 and "error: --metrics: 'perplexity' is not one of loss, ppl, bpb" in unknown.stderr
    missing = invoke_lmkit("evaluate", str(gpt), str(dataset), "--fail-if", "accuracy<0.8")
    assert missing.returncode == 1
    assert ("error: --fail-if 'accuracy<0.8': --task lm has no metric 'accuracy' (it has: bpb, loss, ppl)"
            in missing.stderr)


def test_empty_split_and_missing_data_are_refused(gpt, dataset):
    empty = invoke_lmkit("evaluate", str(gpt), str(dataset), "--split", "test")
    assert empty.returncode == 1 and f"error: {dataset}: the test split is empty" in empty.stderr
    nothing = invoke_lmkit("evaluate", str(gpt))
    assert nothing.returncode == 1 and "error: DATA: required" in nothing.stderr


def test_without_out_the_report_is_printed_and_said_so(gpt, dataset):
    result = runner.invoke(app, ["evaluate", str(gpt), str(dataset), *FAST, "--limit", "4"])
    assert result.exit_code == 0, result.output
    assert "no --out: the report is printed, not saved" in result.output
    assert "lm report → not saved" in result.output and "tokens/s" in result.output


def test_classification_tables_and_compare(gpt, dataset, tmp_path):
    classifier = classifier_checkpoint(gpt, tmp_path / "classifier")
    labeled = labeled_dataset(dataset / "tokenizer", tmp_path / "data")
    first = runner.invoke(app, ["evaluate", str(classifier), str(labeled), "--out", str(tmp_path / "a"), *FAST])
    assert first.exit_code == 0, first.output
    assert "per class" in first.output and "confusion matrix" in first.output and "gold \\ predicted" in first.output
    assert (tmp_path / "a" / "confusion.png").exists()
    compared = runner.invoke(app, ["evaluate", str(classifier), str(labeled), "--split", "train", *FAST,
                                   "--compare", str(tmp_path / "a")])
    assert compared.exit_code == 0, compared.output
    assert f"compared with {tmp_path / 'a'}" in compared.output and "difference" in compared.output


def test_print_config_round_trips(gpt, dataset, tmp_path):
    printed = runner.invoke(app, ["evaluate", str(gpt), str(dataset), "--fail-if", "bpb>2", "--fail-if", "loss>9",
                                  "--stride", "64", "--print-config"])
    assert printed.exit_code == 0, printed.output
    assert 'fail_if = ["bpb>2", "loss>9"]' in printed.output and "stride = 64" in printed.output
    config_file = tmp_path / "evaluate.toml"
    config_file.write_text(printed.output)
    again = runner.invoke(app, ["evaluate", "--config", str(config_file), "--print-config"])
    assert again.output == printed.output


def test_help_documents_the_exit_codes():
    result = runner.invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0 and "3 a --fail-if condition held" in result.output


@pytest.mark.slow  # a subprocess importing torch and the harness: about 10 s
def test_harness_through_the_command_line(gpt, tmp_path):
    pytest.importorskip("lm_eval")
    from tests.evaluation.helpers import write_tasks

    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "report"
    result = run_lmkit("evaluate", str(gpt), "--harness-tasks", "tiny_choice", "--harness-include", str(tasks),
                       "--out", str(out), *FAST, "--fail-if", "tiny_choice/acc<0",
                       env={"HF_DATASETS_CACHE": str(tmp_path / "hf-datasets")})
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert set(report["metrics"]) == {"tiny_choice/acc", "tiny_choice/acc_norm"}


def test_baseline_columns_and_a_gate_against_it(gpt, dataset):
    result = invoke_lmkit("evaluate", str(gpt), str(dataset), *FAST, "--baseline", "--fail-if", "bpb>baseline_bpb+1")
    assert result.returncode == 1 and "does not parse" in result.stderr  # arithmetic is not part of the grammar
    result = invoke_lmkit("evaluate", str(gpt), str(dataset), *FAST, "--baseline", "--fail-if", "bpb<baseline_bpb")
    header = next(line for line in result.stdout.splitlines() if "metric" in line)
    assert "baseline" in header and "difference" in header
    # A two-step model does not beat a trigram: the gate holds and names both sides.
    assert result.returncode == 0, result.stderr
    failing = invoke_lmkit("evaluate", str(gpt), str(dataset), *FAST, "--baseline", "--fail-if", "bpb>baseline_bpb")
    assert failing.returncode == 3 and "error: --fail-if 'bpb>baseline_bpb' holds: bpb = " in failing.stderr
    assert ", baseline_bpb = " in failing.stderr
