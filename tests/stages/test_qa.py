"""Extractive question answering through the Python API: finetune --task qa learns, resumes exactly and refuses
bad input before compute; evaluate scores it with SQuAD's metrics beside the first-sentence baseline."""

import json
import shutil

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.data.qa import first_sentence
from lmkit.errors import UserError
from lmkit.stages import evaluate, finetune
from lmkit.stages.evaluate_config import EvaluateConfig
from lmkit.stages.finetune_config import FinetuneConfig
from tests.stages.test_finetune import metrics, weights

FAST = {"micro_batch": 8, "max_steps": 12, "eval_every": 4, "warmup_steps": 2, "lr": 3e-3, "precision": "fp32",
        "log_every": 1, "seq_len": 48}


def config(base, data, out, **overrides):
    return resolve(FinetuneConfig, {}, {"base": str(base), "data": str(data), "out": str(out), **FAST, **overrides})


def test_qa_learns_the_span_and_records_its_settings(bases, qa_file, tmp_path):
    result = finetune.run(config(bases["bert"], qa_file, tmp_path / "run", max_steps=80, eval_every=40,
                                 chunk_stride=16, max_answer_tokens=5))
    checkpoint = read_checkpoint(result.checkpoint.path)
    assert checkpoint.task == "qa" and checkpoint.objective == "qa"  # --task auto: a question/context JSONL
    assert checkpoint.qa == {"max_len": 48, "stride": 16, "max_answer_tokens": 5}
    assert checkpoint.max_len == 48 and type(checkpoint.build_model()).__name__ == "SpanExtractor"
    f1 = metrics(tmp_path / "run", "val_f1")
    assert f1[-1][1] >= 0.5, f1  # the code follows "The code is" in every context
    assert {"val_loss", "val_exact_match"} <= set(json.loads((tmp_path / "run" / "metrics.jsonl").read_text()
                                                             .splitlines()[-1]))


def test_resume_equals_uninterrupted(bases, qa_file, tmp_path):
    settings = {"checkpoint_every": 6, "keep_last": 5, "final": "last", "dropout": 0.1}
    full = finetune.run(config(bases["bert"], qa_file, tmp_path / "full", **settings))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "full" / "step-00000006", partial / "step-00000006")
    resumed = finetune.run(config(bases["bert"], qa_file, partial, resume=True, **settings))
    for name, tensor in weights(full.checkpoint.path).items():
        assert torch.equal(tensor, weights(resumed.checkpoint.path)[name]), name
    assert metrics(tmp_path / "full")[6:] == metrics(partial)


def test_bad_inputs_are_refused_before_compute(bases, qa_file, tmp_path):
    bad = tmp_path / "bad.jsonl"
    records = qa_file.read_text().splitlines()
    record = json.loads(records[1])
    record["answers"]["answer_start"] = [record["answers"]["answer_start"][0] + 1]
    bad.write_text("\n".join([records[0], json.dumps(record)]) + "\n")
    found = record["context"][record["answers"]["answer_start"][0]:][:4]
    cases = [
        ({"data": bad}, f"{bad}:2: answer {record['answers']['text'][0]!r} does not match the context at answer_start "
                        f"{record['answers']['answer_start'][0]} (found {found!r})"),
        ({"base": bases["gpt"]}, "--task qa: does not fit a gpt model"),
        ({"chunk_stride": 40}, "--chunk-stride 40: must be at most 23"),
        ({"metric": "accuracy"}, "--metric accuracy: is a classification metric; --task qa validates on f1"),
        ({"teacher": str(bases["bert"])}, "--teacher: distillation covers --task classify"),
    ]
    for overrides, message in cases:
        values = {"base": bases["bert"], "data": qa_file, **overrides}
        base, data = values.pop("base"), values.pop("data")
        with pytest.raises(UserError) as caught:
            finetune.run(config(base, data, tmp_path / "run", task="qa", **values))
        assert message in str(caught.value)
        assert not (tmp_path / "run").exists()


def test_a_qa_checkpoint_is_no_base_and_no_language_model(qa_checkpoint, qa_file, tmp_path):
    with pytest.raises(UserError, match="is a question-answering \\(span\\) checkpoint"):
        finetune.run(config(qa_checkpoint, qa_file, tmp_path / "run"))
    with pytest.raises(UserError, match="--task lm: .* is a question-answering \\(span\\) model"):
        evaluate.run(resolve(EvaluateConfig, {}, {"checkpoint": str(qa_checkpoint), "data": [str(qa_file)],
                                                  "task": "lm"}))


def test_evaluate_reports_squad_metrics_and_the_first_sentence_baseline(qa_checkpoint, qa_file, tmp_path):
    result = evaluate.run(resolve(EvaluateConfig, {}, {"checkpoint": str(qa_checkpoint), "data": [str(qa_file)],
                                                       "out": str(tmp_path / "report"), "baseline": True,
                                                       "limit": 20, "precision": "fp32"}))
    report = result.report
    assert report["task"] == "qa" and report["examples"] == 20
    assert set(report["metrics"]) == {"exact_match", "f1", "baseline_exact_match", "baseline_f1"}
    predictions = [json.loads(line) for line in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    from lmkit.evaluation.squad import squad_scores

    scores, _ = squad_scores([p["predicted"] for p in predictions], [p["gold"] for p in predictions])
    assert scores == pytest.approx({k: report["metrics"][k] for k in ("exact_match", "f1")})
    records = [json.loads(line) for line in qa_file.read_text().splitlines()[:20]]
    for prediction, record in zip(predictions, records):
        assert record["context"][prediction["start"]:prediction["end"]] == prediction["predicted"]
        assert prediction["baseline_predicted"] == first_sentence(record["context"])
    assert report["baseline"]["metrics"]["exact_match"] == 0.0  # a code is never a whole first sentence
