"""pretrain --eval-tasks: choice files, the held-out set and harness tasks scored at each validation, logged beside the
validation loss, agreeing with `lmkit evaluate` on the same weights; bad uses refused in one line before the run
starts."""

import json

import pytest

from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.stages import evaluate, pretrain
from lmkit.stages.evaluate_config import EvaluateConfig
from lmkit.stages.pretrain_config import PretrainConfig
from tests.conftest import paragraphs
from tests.evaluation.helpers import write_tasks

FAST = {"seq_len": 32, "micro_batch": 4, "eval_every": 2, "eval_batches": 2, "checkpoint_every": 0,
        "warmup_steps": 2, "lr": 3e-3, "precision": "fp32", "log_every": 1, "max_steps": 4}


def config(dataset, out, **overrides):
    return resolve(PretrainConfig, {}, {"dataset": str(dataset), "out": str(out), **FAST, **overrides})


@pytest.fixture(scope="module")
def choices(tmp_path_factory):
    """Which of two sentences of the corpus continues its first words: 12 items."""
    path = tmp_path_factory.mktemp("tasks") / "next-words.jsonl"
    texts = [t for t in paragraphs() if len(t.split()) > 12][:13]
    items = [{"context": " ".join(a.split()[:6]), "choices": [" " + " ".join(a.split()[6:12]),
                                                              " " + " ".join(b.split()[6:12])], "answer": 0}
             for a, b in zip(texts, texts[1:])]
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_eval_tasks_are_logged_with_validation_and_agree_with_evaluate(dataset, tmp_path, choices):
    final = pretrain.run(config(dataset, tmp_path / "run", eval_tasks=[str(choices)]))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        assert 0.0 <= record["val_next_words_accuracy"] <= 1.0 and 0.0 <= record["val_next_words_acc_norm"] <= 1.0
        assert record["eval_tasks_s"] > 0
        # One two-way task: its accuracy centered on chance (0.5) is the score.
        assert record["val_tasks_score"] == pytest.approx((record["val_next_words_accuracy"] - 0.5) / 0.5)
    report = evaluate.run(resolve(EvaluateConfig, {}, {"checkpoint": str(final.path), "data": [str(choices)],
                                                        "task": "choice", "precision": "fp32", "batch_size": 4}))
    assert report.report["metrics"]["accuracy"] == evals[-1]["val_next_words_accuracy"]
    assert report.report["metrics"]["acc_norm"] == evals[-1]["val_next_words_acc_norm"]


def test_eval_task_items_limits_the_items(dataset, tmp_path, choices, monkeypatch):
    from lmkit.training import downstream

    seen = []
    real = downstream.evaluate_choices
    monkeypatch.setattr(downstream, "evaluate_choices", lambda inference, tokenizer, items, max_len: (
        seen.append(len(items)), real(inference, tokenizer, items, max_len))[1])
    pretrain.run(config(dataset, tmp_path / "run", eval_tasks=[str(choices)], eval_task_items=5, max_steps=2))
    assert seen == [5]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"model": "bert-tiny"}, "--eval-tasks: scores a causal model's choices; --objective auto (mlm for a bert "
                             "model) trains a mlm model"),
    ({"eval_every": 0}, "--eval-tasks: scored at each validation; --eval-every 0 never validates"),
    ({"eval_tasks": ["missing.jsonl"]}, "--eval-tasks missing.jsonl: no such file"),
    ({"eval_tasks": ["hellaswag"]}, "--eval-tasks hellaswag: not a file, not 'heldout', and no --harness-include DIR"),
    ({"eval_tasks": [], "harness_include": "tasks"}, "--harness-include: names where --eval-tasks finds harness"),
])
def test_bad_eval_tasks_are_refused_before_the_run(dataset, tmp_path, choices, overrides, message):
    values = {"eval_tasks": [str(choices)], **overrides}
    with pytest.raises(UserError) as error:
        pretrain.run(config(dataset, tmp_path / "run", **values))
    assert str(error.value).startswith(message)
    assert not (tmp_path / "run").exists()


def test_a_choice_longer_than_the_window_is_refused_before_the_run(dataset, tmp_path):
    tasks = tmp_path / "long.jsonl"
    tasks.write_text(json.dumps({"context": "The for", "choices": [" statement", " statement" * 40], "answer": 0}))
    with pytest.raises(UserError) as error:
        pretrain.run(config(dataset, tmp_path / "run", eval_tasks=[str(tasks)]))
    assert str(error.value).startswith(f"--eval-tasks {tasks}:1: choice ' statement statement")
    assert str(error.value).endswith("more than the 32-token window (--seq-len)")
    assert not (tmp_path / "run").exists()


def test_the_heldout_set_is_made_from_the_validation_split_and_scored(dataset, tmp_path):
    pretrain.run(config(dataset, tmp_path / "run", eval_tasks=["heldout"], eval_task_items=8, max_steps=2))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if "val_loss" in r]
    for task in ("heldout_continuation", "heldout_order"):
        assert 0.0 <= record[f"val_{task}_accuracy"] <= 1.0
    chance_centered = [(record[f"val_{t}_accuracy"] - 0.25) / 0.75 for t in ("heldout_continuation", "heldout_order")]
    assert record["val_tasks_score"] == pytest.approx(sum(chance_centered) / 2)


@pytest.fixture
def harness_tasks(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    tasks = write_tasks(tmp_path / "tasks")
    (tasks / "tiny_generate.yaml").write_text(f"""task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tasks / "choice.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: exact_match
""")
    return tasks


def test_harness_tasks_are_scored_as_evaluate_scores_them(dataset, tmp_path, harness_tasks):
    final = pretrain.run(config(dataset, tmp_path / "run", eval_tasks=["tiny_choice", "tiny_rolling"],
                                harness_include=str(harness_tasks), max_steps=2))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if "val_loss" in r]
    report = evaluate.run(resolve(EvaluateConfig, {}, {
        "checkpoint": str(final.path), "harness_tasks": ["tiny_choice", "tiny_rolling"], "window": 32,
        "stride": 32, "harness_include": str(harness_tasks), "precision": "fp32", "batch_size": 4}))
    metrics = report.report["metrics"]
    assert record["val_tiny_choice_acc"] == metrics["tiny_choice/acc"]
    assert record["val_tiny_rolling_bits_per_byte"] == pytest.approx(metrics["tiny_rolling/bits_per_byte"], rel=1e-6)
    assert "val_tasks_score" not in record  # the score averages the choice tasks lmkit scores itself


@pytest.mark.parametrize(("tasks", "message"), [
    (["tiny_generate"], "--eval-tasks tiny_generate: a generation task; pretraining scores likelihoods only"),
    (["tiny_choice", "nope"], "--eval-tasks: no task 'nope' in "),
])
def test_bad_harness_tasks_are_refused_before_the_run(dataset, tmp_path, harness_tasks, tasks, message):
    with pytest.raises(UserError) as error:
        pretrain.run(config(dataset, tmp_path / "run", eval_tasks=tasks, harness_include=str(harness_tasks)))
    assert str(error.value).startswith(message)
    assert not (tmp_path / "run").exists()
