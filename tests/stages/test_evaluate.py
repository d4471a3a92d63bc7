"""The evaluate stage through its Python API, on real tiny checkpoints: reports, lineage, every task,
and every refusal of bad input (with its message, before any compute or output)."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.evaluation.scoring import Inference
from lmkit.stages import evaluate
from lmkit.stages.evaluate_config import EvaluateConfig
from tests.conftest import block_imports, paragraphs
from tests.evaluation.helpers import LABELS, classifier_checkpoint, labeled_dataset


def config(checkpoint, *data, **overrides):
    values = {"checkpoint": str(checkpoint), "data": [str(d) for d in data], "precision": "fp32", "batch_size": 8,
              **overrides}
    return resolve(EvaluateConfig, {}, values)


@pytest.fixture(scope="module")
def classifier(gpt, tmp_path_factory):
    return classifier_checkpoint(gpt, tmp_path_factory.mktemp("classifier") / "ckpt")


@pytest.fixture(scope="module")
def labeled(dataset, tmp_path_factory):
    return labeled_dataset(dataset / "tokenizer", tmp_path_factory.mktemp("labeled"))


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- language modeling ---------------------------------------------------------------------------------
def test_lm_report_artifact_with_lineage_then_up_to_date(gpt, dataset, tmp_path):
    out = tmp_path / "report"
    result = evaluate.run(config(gpt, dataset, out=str(out)))
    report = json.loads((out / "report.json").read_text())
    assert report == result.report and result.artifact.kind == "report" and result.failures == []
    assert set(report["metrics"]) == {"loss", "ppl", "bpb"}
    assert report["metrics"]["ppl"] == pytest.approx(math.exp(report["metrics"]["loss"]))
    assert report["method"]["window"] == 128 and report["method"]["stride"] == 128  # gpt-tiny's block size
    assert report["data"] == {"kind": "dataset", "path": str(dataset), "id": artifacts.load(dataset).id,
                              "split": "validation"}
    assert report["speed"]["tokens_per_s"] > 0 and report["speed"]["tokens"] > 0
    # The corpus figures are the per-document ones put together.
    documents = read_jsonl(out / "predictions.jsonl")
    assert len(documents) == report["examples"] == artifacts.load(dataset).stats["splits"]["validation"]["documents"]
    nats = sum(d["loss"] * d["tokens"] for d in documents)
    assert report["metrics"]["loss"] == pytest.approx(nats / sum(d["tokens"] for d in documents), rel=1e-5)
    assert report["metrics"]["bpb"] == pytest.approx(nats / math.log(2) / sum(d["bytes"] for d in documents), rel=1e-5)
    # Lineage: the checkpoint and the dataset, by id; the manifest carries the metrics.
    artifact = artifacts.load(out, kind="report")
    assert {p["role"]: p["id"] for p in artifact.parents} == {"checkpoint": artifacts.load(gpt).id,
                                                              "dataset": artifacts.load(dataset).id}
    assert artifact.parent_path("checkpoint") == gpt.resolve() and artifact.stats["metrics"] == report["metrics"]
    assert "| bpb |" in (out / "report.md").read_text()
    again = evaluate.run(config(gpt, dataset, out=str(out)))
    assert again.up_to_date and again.report == report and again.artifact.id == artifact.id


def test_a_different_report_in_out_is_refused_before_any_compute(gpt, dataset, tmp_path, monkeypatch):
    out = tmp_path / "report"
    first = evaluate.run(config(gpt, dataset, out=str(out)))
    monkeypatch.setattr(evaluate, "_evaluate", lambda *a: pytest.fail("computed before refusing"))
    with pytest.raises(UserError, match="already holds a different report artifact.*use --force"):
        evaluate.run(config(gpt, dataset, out=str(out), stride=64))
    assert artifacts.load(out).id == first.artifact.id
    monkeypatch.undo()
    forced = evaluate.run(config(gpt, dataset, out=str(out), stride=64, force=True))
    assert forced.report["method"]["stride"] == 64


def test_sliding_window_gives_the_model_more_context(gpt, dataset):
    disjoint = evaluate.run(config(gpt, dataset, window=16, stride=16, limit=6)).report
    sliding = evaluate.run(config(gpt, dataset, window=16, stride=4, limit=6)).report
    assert disjoint["counts"]["tokens"] == sliding["counts"]["tokens"]  # the same tokens, each scored once
    assert sliding["counts"]["windows"] > disjoint["counts"]["windows"]
    assert sliding["metrics"]["loss"] != pytest.approx(disjoint["metrics"]["loss"], rel=1e-6)


def test_raw_text_files_are_tokenized_with_the_checkpoint_tokenizer(gpt, tmp_path):
    text = tmp_path / "held_out.txt"
    text.write_text("\n\n".join(paragraphs(40)[-5:]) + "\n")
    out = tmp_path / "report"
    result = evaluate.run(config(gpt, text, out=str(out)))
    assert result.report["data"] == {"kind": "files", "files": [str(text)]}
    assert result.report["examples"] == 5
    assert result.report["counts"]["bytes"] == sum(len(p.encode()) for p in paragraphs(40)[-5:])
    (raw,) = artifacts.load(out).manifest["inputs"]["files"]
    assert raw["sha256"] == artifacts.sha256_file(text) and raw["role"] == "data"
    assert [p["role"] for p in artifacts.load(out).parents] == ["checkpoint"]


def test_no_out_prints_only(gpt, dataset, tmp_path, capsys):
    result = evaluate.run(config(gpt, dataset, limit=3))
    assert result.artifact is None and result.report["examples"] == 3
    assert "no --out: the report is printed, not saved" in capsys.readouterr().err


def test_bert_masked_lm_is_seeded(bert, dataset):
    first = evaluate.run(config(bert, dataset)).report
    assert set(first["metrics"]) == {"loss", "ppl", "mlm_accuracy"} and first["method"]["method"] == "masked_lm"
    assert first["counts"]["masked_tokens"] > 0 and 0 <= first["metrics"]["mlm_accuracy"] <= 1
    assert evaluate.run(config(bert, dataset, batch_size=3)).report["metrics"] == pytest.approx(first["metrics"])
    other = evaluate.run(config(bert, dataset, seed=1)).report
    assert other["metrics"]["loss"] != pytest.approx(first["metrics"]["loss"], rel=1e-9)


# -- classification --------------------------------------------------------------------------------------
def test_classification_report_equals_scikit_learn(classifier, labeled, tmp_path):
    out = tmp_path / "report"
    result = evaluate.run(config(classifier, labeled, out=str(out)))
    report = result.report
    assert report["task"] == "classify" and report["data"]["split"] == "validation"
    predictions = read_jsonl(out / "predictions.jsonl")
    assert len(predictions) == report["examples"] > 10
    gold = [LABELS.index(p["gold"]) for p in predictions]
    predicted = [LABELS.index(p["predicted"]) for p in predictions]
    assert len(set(predicted)) > 1, "a degenerate classifier would not test much"
    m = report["metrics"]
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(gold, predicted))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="weighted", zero_division=0))
    assert m["mcc"] == pytest.approx(sk.matthews_corrcoef(gold, predicted))
    assert report["confusion"]["matrix"] == sk.confusion_matrix(gold, predicted, labels=[0, 1, 2]).tolist()
    assert set(report["per_class"]) == set(LABELS)
    for record in predictions:
        assert sum(record["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert record["predicted"] == max(record["probabilities"], key=record["probabilities"].get)
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["files"]["confusion_png"] == "confusion.png"
    assert "confusion.png" in artifacts.load(out).manifest["files"]
    # The gold labels are the dataset's: its label column, in its order.
    dataset_labels = artifacts.load(labeled).stats["labels"]["names"]
    assert sorted(p["gold"] for p in predictions) == sorted(
        dataset_labels[i] for i in _labels_of(labeled, "validation"))


def _labels_of(dataset, split):
    from lmkit.data.shards import read_shard

    loaded = artifacts.load(dataset)
    return [label for shard in loaded.stats["splits"][split]["shards"]
            for label in read_shard(loaded.file(shard["file"])).column("label").to_pylist()]


def test_classification_from_jsonl_and_its_label_problems(classifier, tmp_path):
    rows = [{"text": "a function that returns a value", "label": "alpha"},
            {"text": "a class that holds the state", "label": "beta"},
            {"text": "a module of helpers", "label": "gamma"}]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate.run(config(classifier, data)).report
    assert report["examples"] == 3 and report["confusion"]["labels"] == LABELS
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"text": "some text here", "label": "delta"}) + "\n")
    with pytest.raises(UserError, match=r"gold label\(s\) 'delta' are not among the checkpoint's labels "
                                        r"\(alpha, beta, gamma\)"):
        evaluate.run(config(classifier, unknown))
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"text": "some text here", "label": "alpha"}) + "\n"
                       + json.dumps({"text": "no label in this one"}) + "\n")
    with pytest.raises(UserError, match=rf"{missing}:2: has no label \(--label-field label\)"):
        evaluate.run(config(classifier, missing))
    text = tmp_path / "plain.txt"
    text.write_text("plain text has no labels at all\n")
    with pytest.raises(UserError, match="plain text has no labels"):
        evaluate.run(config(classifier, text))


def test_a_pair_classifier_reads_pairs_and_refuses_single_texts_and_vice_versa(classifier, pair_classifier,
                                                                              pair_dataset, labeled, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"text": t, "second": p, "label": y}) + "\n"
                            for t, p, y in (("a text", "its pair", "same"), ("one", "another", "other"))))
    report = evaluate.run(config(pair_classifier, data, text_pair_field="second")).report
    assert report["examples"] == 2 and report["method"]["framing"] == "[CLS] text [SEP] pair [SEP]"
    refusals = [
        (config(pair_classifier, labeled), f"{labeled}: holds single texts, but {pair_classifier} classifies pairs "
                                           "of texts (finetuned on a pair dataset); preprocess it with "
                                           "--text-pair-field"),
        (config(pair_classifier, data), f"{data}: holds single texts, but {pair_classifier} classifies pairs of texts "
                                        "(finetuned on a pair dataset); give --text-pair-field FIELD"),
        (config(classifier, pair_dataset), f"{pair_dataset}: holds pairs of texts, but {classifier} classifies single "
                                           "texts; finetune a classifier on this pair dataset"),
        (config(classifier, data, text_pair_field="second"), f"--text-pair-field second: {classifier} classifies "
                                                             "single texts, not pairs"),
        (config(pair_classifier, pair_dataset, text_pair_field="second"), "--text-pair-field: reads the second "
                                                                          "texts of raw files for --task classify"),
        (config(pair_classifier, pair_dataset, long_text="max"), "--long-text max: reads one long text as windows"),
    ]
    for refused, message in refusals:
        with pytest.raises(UserError, match=re.escape(message)):
            evaluate.run(refused)


def test_classifier_on_a_dataset_without_labels_is_refused(classifier, dataset):
    with pytest.raises(UserError, match=f"{dataset}: has no labels; classification metrics need gold labels"):
        evaluate.run(config(classifier, dataset))


# -- refusals ------------------------------------------------------------------------------------------------
def test_a_dataset_made_with_another_tokenizer_is_refused(gpt, text_corpus, tmp_path, monkeypatch):
    from lmkit.stages import preprocess
    from lmkit.stages.preprocess_config import PreprocessConfig

    other = tmp_path / "other"
    preprocess.run(resolve(PreprocessConfig, {}, {"inputs": [str(text_corpus)], "out": str(other),
                                                  "vocab_size": 350, "workers": 1}))
    monkeypatch.setattr(evaluate, "_evaluate", lambda *a: pytest.fail("computed before refusing"))
    with pytest.raises(UserError, match=rf"{other}: was tokenized with another tokenizer .* than {gpt}'s .*"
                                        r"preprocess the data with `--tokenizer"):
        evaluate.run(config(gpt, other, out=str(tmp_path / "report")))
    assert not (tmp_path / "report").exists()


def test_an_empty_split_is_refused(gpt, dataset):
    with pytest.raises(UserError, match=r"the test split is empty \(splits with documents: train \(\d+\), validation"):
        evaluate.run(config(gpt, dataset, split="test"))


def test_metrics_a_task_does_not_compute_are_refused(gpt, bert, dataset):
    with pytest.raises(UserError, match="--metrics: accuracy not computed by --task lm; its metrics: loss, ppl, bpb"):
        evaluate.run(config(gpt, dataset, metrics=["accuracy"]))
    with pytest.raises(UserError, match=r"--metrics: bpb not computed by masked-LM evaluation \(a BERT checkpoint\)"):
        evaluate.run(config(bert, dataset, metrics=["bpb"]))
    chosen = evaluate.run(config(gpt, dataset, metrics=["bpb"], limit=2)).report
    assert list(chosen["metrics"]) == ["bpb"]


def test_unknown_metric_and_unparsable_gate_are_config_errors(gpt, dataset):
    with pytest.raises(UserError, match="--metrics: 'accuracyy' is not one of"):
        config(gpt, dataset, metrics=["accuracyy"])
    with pytest.raises(UserError, match=r"--fail-if 'bpb>>1': does not parse"):
        config(gpt, dataset, fail_if=["bpb>>1"])


def test_a_gate_on_a_metric_the_task_lacks_is_refused_before_compute(gpt, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "_evaluate", lambda *a: pytest.fail("computed before refusing"))
    with pytest.raises(UserError, match=r"--fail-if 'accuracy<0.8': --task lm has no metric 'accuracy' "
                                        r"\(it has: bpb, loss, ppl\)"):
        evaluate.run(config(gpt, dataset, fail_if=["accuracy<0.8"], out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


def test_task_and_checkpoint_mismatches_are_refused(gpt, bert, classifier, dataset, tmp_path):
    with pytest.raises(UserError, match=f"--task classify: {gpt} is not a classifier"):
        evaluate.run(config(gpt, dataset, task="classify"))
    with pytest.raises(UserError, match=f"--task lm: {classifier} is a classifier without a language-model head"):
        evaluate.run(config(classifier, dataset, task="lm"))
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 0}) + "\n")
    with pytest.raises(UserError, match=r"--task choice: needs a causal language model; .* is a bert"):
        evaluate.run(config(bert, items, task="choice"))
    with pytest.raises(UserError, match="--task choice: reads JSONL files, not a dataset artifact"):
        evaluate.run(config(gpt, dataset, task="choice"))
    with pytest.raises(UserError, match="--harness-tasks: the harness needs a causal language model"):
        evaluate.run(config(bert, harness_tasks=["anything"]))
    with pytest.raises(UserError, match="--window 512: exceeds the model's block size 128"):
        evaluate.run(config(gpt, dataset, window=512))


def test_a_flag_the_evaluation_does_not_read_is_refused_naming_who_reads_it(gpt, classifier, dataset, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(evaluate, "_evaluate", lambda *a: pytest.fail("computed before refusing"))
    cases = [
        (config(gpt, dataset, mask_prob=0.3), "--mask-prob: read by masked-LM evaluation (a BERT checkpoint), not by "
                                               "--task lm"),
        (config(classifier, dataset, stride=8), "--stride: read by --task lm, --harness-tasks, not by --task classify"),
        (config(gpt, dataset, long_text="max", max_new_tokens=4),
         "--long-text: read by --task classify, not by --task lm; --max-new-tokens: read by --task generate, "
         "--task pass-at-k, --task chat, --harness-tasks, not by --task lm"),
    ]
    choices = tmp_path / "choices.jsonl"
    choices.write_text(json.dumps({"context": "A", "choices": ["b", "c"], "answer": 0}) + "\n")
    cases.append((config(gpt, choices, task="choice", text_field="body"),
                  "--text-field: read by --task lm, masked-LM evaluation (a BERT checkpoint), --task classify, not by "
                  "--task choice"))
    for refused, message in cases:
        with pytest.raises(UserError, match=re.escape(message)):
            evaluate.run(refused)
    monkeypatch.undo()  # the positive control: a flag where it is read
    assert evaluate.run(config(gpt, dataset, stride=64, limit=2)).report["method"]["stride"] == 64


# -- the gate and comparisons ------------------------------------------------------------------------------
def test_gate_failures_are_returned_after_the_report_is_written(gpt, dataset, tmp_path):
    out = tmp_path / "report"
    result = evaluate.run(config(gpt, dataset, out=str(out), fail_if=["bpb>0.5, loss<0", "ppl>1 and bpb>1000"]))
    bpb, ppl = result.report["metrics"]["bpb"], result.report["metrics"]["ppl"]
    assert result.failures == [f"--fail-if 'bpb>0.5' holds: bpb = {bpb:.6g}",
                               f"--fail-if 'ppl>1' holds: ppl = {ppl:.6g}"]
    assert artifacts.load(out).kind == "report"  # written all the same
    # An up-to-date report is gated too (CI reruns see the same verdict without recomputing).
    again = evaluate.run(config(gpt, dataset, out=str(out), fail_if=["bpb>0.5"]))
    assert again.up_to_date and again.failures == [f"--fail-if 'bpb>0.5' holds: bpb = {bpb:.6g}"]
    assert evaluate.run(config(gpt, dataset, out=str(out), fail_if=["bpb>1000"])).failures == []


def test_compare_with_another_report(gpt, dataset, tmp_path):
    base = evaluate.run(config(gpt, dataset, out=str(tmp_path / "base"), window=16, limit=6)).report
    result = evaluate.run(config(gpt, dataset, compare=str(tmp_path / "base"), window=32, limit=6))
    rows = {row["metric"]: row for row in result.comparison["rows"]}
    assert rows["bpb"]["other"] == base["metrics"]["bpb"]
    assert rows["bpb"]["delta"] == pytest.approx(result.report["metrics"]["bpb"] - base["metrics"]["bpb"])
    assert any("window 32 vs 16" in w for w in result.comparison["warnings"])
    same_file = evaluate.run(config(gpt, dataset, compare=str(tmp_path / "base" / "report.json"), window=16, limit=6))
    assert all(row["delta"] == pytest.approx(0.0) for row in same_file.comparison["rows"])
    with pytest.raises(UserError, match="no such report"):
        evaluate.run(config(gpt, dataset, compare=str(tmp_path / "nowhere")))


# -- zero-shot multiple choice ----------------------------------------------------------------------------
def test_choice_task_from_jsonl(gpt, tmp_path):
    items = [{"context": "The function returns", "choices": [" a value", " the the the"], "answer": 0},
             {"context": "A class", "choices": [" defines objects", " x"], "answer": 1, "id": "second"}]
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in items))
    out = tmp_path / "report"
    report = evaluate.run(config(gpt, data, task="choice", out=str(out))).report
    assert set(report["metrics"]) == {"accuracy", "acc_norm"} and report["examples"] == 2
    predictions = read_jsonl(out / "predictions.jsonl")
    assert [p["id"] for p in predictions] == [f"{data}:1", "second"]
    correct = [p["predicted"] == p["gold"] for p in predictions]
    assert report["metrics"]["accuracy"] == sum(correct) / 2
    assert all(p["predicted"] == int(np.argmax(p["logprobs"])) for p in predictions)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "a", "choices": ["b", "c"]}) + "\n")
    with pytest.raises(UserError, match=rf"{bad}:1: no 'answer'"):
        evaluate.run(config(gpt, bad, task="choice"))


# -- generation (SFT) ---------------------------------------------------------------------------------------
def test_sft_checkpoint_generates_answers_scored_against_references(gpt, tmp_path):
    from lmkit.checkpoint import read_checkpoint
    from lmkit.evaluation.generation_tasks import text_metrics
    from lmkit.generation import Generator, SamplingSettings
    from tests.evaluation.helpers import sft_checkpoint

    sft = sft_checkpoint(gpt, tmp_path / "sft")
    rows = [{"prompt": "What does a function return?", "response": "a value"},
            {"prompt": "Name a loop.", "response": "for"}]
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "report"
    report = evaluate.run(config(sft, data, out=str(out), max_new_tokens=6, stop="\\n")).report
    assert report["task"] == "generate"  # by default, for an SFT checkpoint
    assert report["method"]["temperature"] == 0.0 and report["method"]["max_new_tokens"] == 6
    assert report["method"]["stop"] == ["\n"]
    predictions = read_jsonl(out / "predictions.jsonl")
    expected = Generator(read_checkpoint(sft)).generate(
        [r["prompt"] for r in rows], SamplingSettings(temperature=0.0, max_new_tokens=6, stop=("\n",)))
    assert [p["predicted"] for p in predictions] == expected
    assert report["metrics"] == pytest.approx(text_metrics(expected, [r["response"] for r in rows],
                                                           ["exact_match", "chrf", "bleu", "rouge_l"]))
    from lmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_artifact(read_checkpoint(sft).tokenizer_path)
    assert report["counts"]["generated_tokens"] == sum(len(tokenizer.encode(text)) for text in expected)


# -- lm-evaluation-harness ------------------------------------------------------------------------------------
def test_harness_tasks_from_local_files_into_the_report(gpt, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    from tests.evaluation.helpers import write_tasks

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "report"
    result = evaluate.run(config(gpt, harness_tasks=["tiny_choice", "tiny_rolling"], harness_include=str(tasks),
                                 out=str(out), fail_if=["tiny_rolling/bits_per_byte>1000"]))
    report = result.report
    assert report["task"] == "harness" and result.failures == []
    assert 0 <= report["metrics"]["tiny_choice/acc"] <= 1 and report["metrics"]["tiny_rolling/bits_per_byte"] > 0
    assert report["method"]["harness"]["tasks"] == ["tiny_choice", "tiny_rolling"]
    assert report["speed"]["tokens"] > 0
    roles = {Path(f["path"]).name: f["role"] for f in artifacts.load(out).manifest["inputs"]["files"]}
    assert roles == {"choice.jsonl": "harness", "texts.jsonl": "harness", "tiny_choice.yaml": "harness",
                     "tiny_rolling.yaml": "harness"}
    with pytest.raises(UserError, match="--harness-tasks: no task 'missing'"):
        evaluate.run(config(gpt, harness_tasks=["missing"], harness_include=str(tasks)))


def test_library_metrics_need_their_extra(gpt, tmp_path, monkeypatch):
    from tests.evaluation.helpers import sft_checkpoint

    sft = sft_checkpoint(gpt, tmp_path / "sft")
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"prompt": "Name a loop.", "response": "for"}) + "\n")
    monkeypatch.setattr(evaluate.generation_tasks, "missing_extra", lambda m: "sacrebleu" if m == "bleu" else None)
    with pytest.raises(UserError, match=r"--metrics bleu: needs the sacrebleu package; install lmkit\[metrics\]"):
        evaluate.run(config(sft, data, metrics=["bleu"]))
    report = evaluate.run(config(sft, data, max_new_tokens=2)).report
    assert "bleu" not in report["metrics"] and "chrf" in report["metrics"]
    assert "bleu not computed: install lmkit[metrics] for it" in report["notes"]


# -- --baseline ---------------------------------------------------------------------------------------------
KEYWORDS = {"alpha": "orbit rocket", "beta": "bread cheese", "gamma": "court verdict"}


@pytest.fixture(scope="module")
def topical(dataset, tmp_path_factory):
    """A labeled dataset whose label a word of the text gives away: a linear model on words gets it right."""
    records = [{"text": f"{text} {KEYWORDS[LABELS[i % 3]]}", "label": LABELS[i % 3]}
               for i, text in enumerate(paragraphs(150))]
    return labeled_dataset(dataset / "tokenizer", tmp_path_factory.mktemp("topical"), records)


def test_classification_baseline_beside_the_model_and_gated_on(classifier, topical, tmp_path):
    out = tmp_path / "report"
    result = evaluate.run(config(classifier, topical, out=str(out), baseline=True,
                                 fail_if=["accuracy<baseline_accuracy"]))
    report = result.report
    m, baseline = report["metrics"], report["baseline"]
    assert {f"baseline_{name}" for name in ("accuracy", "macro_f1", "mcc")} <= set(m)
    assert baseline["difference"]["accuracy"] == pytest.approx(m["accuracy"] - m["baseline_accuracy"])
    assert baseline["method"]["C"] in (1.0, 10.0, 100.0) and baseline["method"]["train_examples"] > 50
    # The records carry the baseline's label; its accuracy is theirs.
    predictions = read_jsonl(out / "predictions.jsonl")
    agree = [p["baseline_predicted"] == p["gold"] for p in predictions]
    assert m["baseline_accuracy"] == pytest.approx(sum(agree) / len(agree))
    assert m["baseline_accuracy"] > 0.9  # the keyword decides; the random-headed classifier cannot know it
    assert result.failures == [f"--fail-if 'accuracy<baseline_accuracy' holds: accuracy = {m['accuracy']:.6g}, "
                               f"baseline_accuracy = {m['baseline_accuracy']:.6g}"]
    assert "| accuracy |" in (out / "report.md").read_text() \
        and "Baseline: model TF-IDF" in (out / "report.md").read_text()


def test_language_model_baseline_is_a_trigram_on_the_train_split(gpt, dataset):
    report = evaluate.run(config(gpt, dataset, baseline=True)).report
    m = report["metrics"]
    assert set(m) == {"loss", "ppl", "bpb", "baseline_loss", "baseline_ppl", "baseline_bpb"}
    assert 0 < m["baseline_bpb"] < 8 and m["baseline_ppl"] == pytest.approx(math.exp(m["baseline_loss"]))
    assert report["baseline"]["difference"]["bpb"] == pytest.approx(m["bpb"] - m["baseline_bpb"])
    stats = artifacts.load(dataset).stats["splits"]["train"]
    assert report["baseline"]["method"]["train_documents"] == stats["documents"]


def test_baseline_refusals_before_any_compute(gpt, bert, classifier, dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "_evaluate", lambda *a: pytest.fail("computed before refusing"))
    with pytest.raises(UserError, match=r"--baseline: the n-gram baseline compares bits per byte, which a masked LM"):
        evaluate.run(config(bert, dataset, baseline=True))
    text = tmp_path / "eval.txt"
    text.write_text("a paragraph of text to score\n")
    with pytest.raises(UserError, match="--baseline: trains on the train split of a dataset artifact; DATA here is "
                                        "raw files"):
        evaluate.run(config(gpt, text, baseline=True))
    choices = tmp_path / "choices.jsonl"
    choices.write_text(json.dumps({"question": "A", "options": ["b", "c"], "label": 0}) + "\n")
    with pytest.raises(UserError, match="--baseline: there is a baseline for --task chat, classify, lm and qa, not for "
                                        "--task choice"):
        evaluate.run(config(gpt, choices, task="choice", baseline=True))
    with pytest.raises(UserError, match=r"--fail-if 'accuracy<baseline_accuracy': compares with the baseline; add "
                                        r"--baseline"):
        evaluate.run(config(classifier, dataset, fail_if=["accuracy<baseline_accuracy"]))
    with pytest.raises(UserError, match=r"--fail-if 'bpb>baseline_accuracy': --task lm with --baseline has no "
                                        r"metric 'baseline_accuracy'"):
        evaluate.run(config(gpt, dataset, baseline=True, fail_if=["bpb>baseline_accuracy"]))


def test_classification_baseline_names_its_extra(classifier, topical, monkeypatch):
    block_imports(monkeypatch, "sklearn")
    with pytest.raises(UserError, match=r"--baseline: the classification baseline needs scikit-learn; install "
                                        r"lmkit\[baselines\]"):
        evaluate.run(config(classifier, topical, baseline=True))


def test_without_a_validation_split_the_baseline_chooses_c_on_a_tenth_of_train(classifier, dataset, tmp_path):
    records = [{"text": f"{text} {KEYWORDS[LABELS[i % 3]]}", "label": LABELS[i % 3]}
               for i, text in enumerate(paragraphs(150))]
    data = labeled_dataset(dataset / "tokenizer", tmp_path, records, val_fraction=0.0, test_fraction=0.3)
    method = evaluate.run(config(classifier, data, split="test", baseline=True)).report["baseline"]["method"]
    train = artifacts.load(data).stats["splits"]["train"]["documents"]
    assert method["train_examples"] + method["validation_examples"] == train
    assert method["validation_examples"] == pytest.approx(0.1 * train, abs=3)


def test_long_documents_are_read_as_chunks_unless_cut(classifier, labeled):
    from lmkit.evaluation import classification
    from lmkit.evaluation.inputs import from_dataset

    checkpoint = read_checkpoint(classifier)
    documents = from_dataset(artifacts.load(labeled), "validation")
    window = 8  # a small window: most documents are long
    assert sum(len(t) > window for t in documents.tokens) > len(documents) / 2
    mean = evaluate.run(config(classifier, labeled, long_text="mean", chunk_stride=4)).report
    assert mean["method"]["long_text"] == "mean" and mean["method"]["chunk_stride"] == 4
    assert 0 < mean["method"]["chunked_documents"] == sum(len(t) > checkpoint.max_len for t in documents.tokens)
    inference = Inference(checkpoint.inference_model(), torch.device("cpu"), "fp32", 4, checkpoint.specials)
    chunked = classification.predict_probabilities(inference, documents.tokens, "gpt", window, checkpoint.specials,
                                                   long_text="max", stride=3)
    cut = classification.predict_probabilities(inference, documents.tokens, "gpt", window, checkpoint.specials)
    assert not np.allclose(chunked, cut)  # the rest of the text now counts
    assert cut.shape == chunked.shape and np.allclose(chunked.sum(1), 1.0)
    with pytest.raises(UserError, match=r"--chunk-stride 500: must be between 1 and the \d+ text tokens of a window"):
        evaluate.run(config(classifier, labeled, chunk_stride=500))


def test_bits_per_byte_per_language(tmp_path):
    from tests.conftest import invoke_lmkit, train_tiny
    from tests.multilingual import write_jsonl

    pytest.importorskip("py3langid")
    source = write_jsonl(tmp_path / "mixed.jsonl", {"en": 40, "de": 25, "es": 15})
    data = tmp_path / "data"
    invoke_lmkit("preprocess", str(source), "--out", str(data), "--language-id", "--vocab-size", "400", "--workers",
                 "1", "--filters", "none", "--no-near-dedup", "--val-fraction", "0.25", check=True)
    gpt = train_tiny(data, tmp_path / "gpt").path
    report = evaluate.run(config(gpt, data, out=str(tmp_path / "report"))).report
    languages = report["languages"]
    counted = artifacts.load(data).stats["languages"]["documents"]["validation"]
    assert {lang: v["documents"] for lang, v in languages.items()} == counted
    total_bytes = sum(v["bytes"] for v in languages.values())
    assert total_bytes == report["counts"]["bytes"]
    assert sum(v["bpb"] * v["bytes"] for v in languages.values()) / total_bytes \
        == pytest.approx(report["metrics"]["bpb"])
    predictions = read_jsonl(tmp_path / "report" / "predictions.jsonl")
    assert sorted({p["lang"] for p in predictions}) == sorted(counted)
    assert "## Per language" in (tmp_path / "report" / "report.md").read_text()
