"""pretrain --eval-tasks: choice tasks scored at each validation, logged beside the validation loss, agreeing with
`lmkit evaluate --task choice` on the same weights; bad uses refused in one line before the run starts."""

import json

import pytest

from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.stages import evaluate, pretrain
from lmkit.stages.evaluate_config import EvaluateConfig
from lmkit.stages.pretrain_config import PretrainConfig
from tests.conftest import paragraphs

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
])
def test_bad_eval_tasks_are_refused_before_the_run(dataset, tmp_path, choices, overrides, message):
    values = {"eval_tasks": [str(choices)], **overrides}
    with pytest.raises(UserError) as error:
        pretrain.run(config(dataset, tmp_path / "run", **values))
    assert str(error.value).startswith(message)
    assert not (tmp_path / "run").exists()
