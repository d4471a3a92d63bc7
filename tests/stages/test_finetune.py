"""The finetune stage through its Python API: each task, LoRA, freezing, distillation, early
stopping, exact resume, the range test, and every bad input it promises to refuse."""

import json
import shutil

import numpy as np
import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.data.labeled import labeled_splits
from lmkit.errors import UserError
from lmkit.models.lora import has_lora, merge_lora
from lmkit.stages import finetune
from lmkit.stages.finetune_config import FinetuneConfig
from tests.conftest import invoke_lmkit, labeled_records, preprocess_labeled, train_tiny

FAST = {"micro_batch": 8, "max_steps": 12, "eval_every": 4, "warmup_steps": 2, "lr": 3e-3, "precision": "fp32",
        "log_every": 1, "seq_len": 48}


def config(base, data, out, **overrides):
    return resolve(FinetuneConfig, {}, {"base": str(base), "data": str(data), "out": str(out), **FAST, **overrides})


def metrics(run_dir, key="loss"):
    return [(r["step"], r[key]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if key in r]


def weights(path):
    return read_checkpoint(path).build_model().state_dict()


# -- tasks -------------------------------------------------------------------------------------------

def test_classify_learns_and_stores_its_labels(bases, labeled, tmp_path):
    result = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", max_steps=40, eval_every=10))
    checkpoint = read_checkpoint(result.checkpoint.path)
    assert checkpoint.task == "classify" and checkpoint.labels == ["lower", "upper"]
    assert checkpoint.head["pooling"] == "mean"  # --pooling auto for a causal transformer
    accuracy = metrics(tmp_path / "run", "val_accuracy")
    assert accuracy[-1][1] >= 0.9, accuracy  # the classes differ in every token
    roles = {p["role"] for p in result.checkpoint.parents}
    assert roles == {"base", "dataset", "tokenizer"}
    assert result.checkpoint.stats["best_step"] is not None


@pytest.mark.parametrize("arch,pooling", [("bert", "cls"), ("bert", "mean"), ("lstm", "last"), ("gpt", "mean")])
def test_classify_every_architecture_and_pooling(bases, labeled, tmp_path, arch, pooling):
    result = finetune.run(config(bases[arch], labeled, tmp_path / "run", max_steps=3, eval_every=3, pooling=pooling))
    model = read_checkpoint(result.checkpoint.path).build_model()
    assert model.pooling == pooling and model.head.out_features == 2


def test_pretrained_backbone_is_loaded(bases, labeled, tmp_path):
    result = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", max_steps=1, lr=1e-12, warmup_steps=0))
    tuned = weights(result.checkpoint.path)
    for name, tensor in weights(bases["gpt"]).items():
        if name != "lm_head.weight":
            assert torch.allclose(tensor, tuned[f"backbone.{name}"], atol=1e-6), name
    scratch = finetune.run(config(bases["gpt"], labeled, tmp_path / "scratch", max_steps=1, lr=1e-12,
                                  warmup_steps=0, scratch=True))
    assert not torch.allclose(weights(scratch.checkpoint.path)["backbone.tok_emb.weight"],
                              tuned["backbone.tok_emb.weight"])


def test_sft_learns_on_responses_only_and_stores_the_template(bases, instructions, tmp_path):
    template = "Q: {prompt}\nA: "
    result = finetune.run(config(bases["gpt"], instructions, tmp_path / "run", template=template, max_steps=8))
    checkpoint = read_checkpoint(result.checkpoint.path)
    assert checkpoint.task == "sft" and checkpoint.template == template and checkpoint.objective == "sft"
    losses = [loss for _, loss in metrics(tmp_path / "run")]
    assert losses[-1] < losses[0]
    assert metrics(tmp_path / "run", "val_token_accuracy")


@pytest.mark.parametrize("arch,task", [("gpt", "clm"), ("bert", "mlm")])
def test_continued_pretraining(bases, dataset, tmp_path, arch, task):
    result = finetune.run(config(bases[arch], dataset, tmp_path / "run", max_steps=4, micro_batch=4))
    checkpoint = read_checkpoint(result.checkpoint.path)
    assert checkpoint.objective == task and checkpoint.task == "lm"
    assert metrics(tmp_path / "run", "val_loss")


# -- parameter-efficient finetuning -----------------------------------------------------------------------

def test_lora_trains_few_parameters_and_merges_to_a_plain_checkpoint(bases, labeled, tmp_path):
    kept = finetune.run(config(bases["gpt"], labeled, tmp_path / "kept", lora_rank=4, lora_merge=False))
    stats = kept.checkpoint.stats
    assert stats["trainable_parameters"] < 0.2 * stats["parameters"]
    unmerged = read_checkpoint(kept.checkpoint.path)
    assert unmerged.lora == {"rank": 4, "alpha": 16.0, "dropout": 0.05}
    model = unmerged.build_model().eval()
    assert has_lora(model)
    # LoRA's B starts at zero: check that training moved it, or the equality below proves nothing.
    assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if n.endswith("lora_b"))
    idx = torch.randint(7, 400, (3, 20))
    before = model(idx)[0]
    after = merge_lora(model)(idx)[0]
    assert torch.allclose(before, after, atol=1e-5)
    # What generate, evaluate, export and a teacher use: merged, in eval mode, frozen, the same outputs.
    served = unmerged.inference_model()
    assert not has_lora(served) and not served.training
    assert not any(p.requires_grad for p in served.parameters())
    assert torch.allclose(served(idx)[0], before, atol=1e-5)
    # The merge command writes a plain checkpoint with the same outputs.
    result = invoke_lmkit("merge-lora", str(kept.checkpoint.path), "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    merged = read_checkpoint(tmp_path / "merged")
    assert merged.lora is None and merged.labels == unmerged.labels
    assert torch.allclose(merged.build_model().eval()(idx)[0], before, atol=1e-5)
    # Merged by default: final/ is a plain checkpoint.
    plain = finetune.run(config(bases["gpt"], labeled, tmp_path / "plain", lora_rank=4, max_steps=2))
    assert read_checkpoint(plain.checkpoint.path).lora is None


def test_merging_lora_keeps_everything_model_json_carries(bases, qa_file, tmp_path):
    """merge-lora copies every key of model.json but the LoRA it merges (a QA model's head too)."""
    kept = finetune.run(config(bases["bert"], qa_file, tmp_path / "kept", task="qa", lora_rank=4, lora_merge=False,
                               max_steps=2))
    result = invoke_lmkit("merge-lora", str(kept.checkpoint.path), "--out", str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    before = json.loads((kept.checkpoint.path / "model.json").read_text())
    after = json.loads((tmp_path / "merged" / "model.json").read_text())
    assert "lora" in before and "lora" not in after
    assert {k: v for k, v in before.items() if k != "lora"} == after


def test_freeze_keeps_frozen_weights(bases, labeled, tmp_path):
    result = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", freeze="embeddings,layers:1"))
    tuned, base = weights(result.checkpoint.path), weights(bases["gpt"])
    assert torch.equal(tuned["backbone.tok_emb.weight"], base["tok_emb.weight"])
    assert torch.equal(tuned["backbone.blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])
    assert not torch.equal(tuned["backbone.blocks.1.attn.qkv.weight"], base["blocks.1.attn.qkv.weight"])


# -- small labeled data -------------------------------------------------------------------------------------

def test_early_stopping_keeps_the_best_in_final(bases, labeled, tmp_path, monkeypatch):
    from lmkit.training.objectives.classification import Classification

    scores = iter([0.5, 0.9, 0.6, 0.7, 0.8, 0.95])
    real = Classification.evaluate

    def scripted(self, model, max_batches):
        found = real(self, model, max_batches)
        return {**found, "val_accuracy": next(scores)}

    monkeypatch.setattr(Classification, "evaluate", scripted)
    result = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", max_steps=40, eval_every=2, patience=2))
    assert result.checkpoint.stats["best_step"] == 4 and result.checkpoint.stats["step"] == 8  # stopped early
    assert result.checkpoint.stats["best_metric"] == pytest.approx(0.9)
    best = weights(tmp_path / "run" / "step-00000004")
    for name, tensor in weights(result.checkpoint.path).items():
        assert torch.equal(tensor, best[name]), name


@pytest.mark.parametrize("overrides", [{}, {"lora_rank": 4, "lora_merge": False}, {"token_dropout": 0.2,
                                                                                   "dropout": 0.1}],
                         ids=["full", "lora", "augmented"])
def test_resume_equals_uninterrupted(bases, labeled, tmp_path, overrides):
    settings = {"checkpoint_every": 6, "keep_last": 5, "final": "last", **overrides}
    full = finetune.run(config(bases["gpt"], labeled, tmp_path / "full", **settings))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "full" / "step-00000006", partial / "step-00000006")
    resumed = finetune.run(config(bases["gpt"], labeled, partial, resume=True, **settings))
    for name, tensor in weights(full.checkpoint.path).items():
        assert torch.equal(tensor, weights(resumed.checkpoint.path)[name]), name
    assert metrics(tmp_path / "full")[6:] == metrics(partial)


def test_validation_split_is_stratified(bases, labeled, tmp_path):
    from lmkit.data.labeled import labeled_splits

    train, validation, names, made = labeled_splits(artifacts.load(labeled), 0.25, seed=0)
    assert made and names == ["lower", "upper"]
    assert sorted(validation.labels.tolist()).count(0) == sorted(validation.labels.tolist()).count(1)
    assert len(validation.tokens) + len(train.tokens) == sum(
        s["documents"] for s in artifacts.load(labeled).stats["splits"].values())


def test_class_weights_balanced(bases, dataset, tmp_path):
    records = labeled_records(40)[:30]  # imbalanced after dropping most of one class
    records = [r for r in records if r["label"] == "upper"] + [r for r in records if r["label"] == "lower"][:5]
    data = preprocess_labeled(dataset, tmp_path / "imbalanced", records, "--val-fraction", "0")
    plan = finetune.plan(config(bases["gpt"], data, tmp_path / "run", class_weights="balanced", micro_batch=2),
                         finetune.distributed.setup())
    objective = plan.spec.build(plan.inputs).objective
    weights_ = objective.class_weights.tolist()
    counts = torch.bincount(torch.tensor(objective.train_labels)).tolist()
    total = sum(counts)
    assert weights_ == pytest.approx([total / (2 * c) for c in counts])


def test_find_lr_suggests_a_rate_and_saves_nothing(bases, labeled, tmp_path):
    result = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", find_lr=True, find_lr_steps=30))
    test = result.range_test
    assert 1e-7 <= test.suggestion <= 1 and len(test.lrs) == len(test.losses) >= 3
    assert test.lrs == sorted(test.lrs)
    assert (tmp_path / "run" / "lr-find.json").is_file() and (tmp_path / "run" / "lr-find.png").stat().st_size > 0
    assert not list((tmp_path / "run").glob("final"))


# -- distillation ---------------------------------------------------------------------------------------------

def test_distillation_into_a_smaller_student(bases, labeled, tmp_path):
    teacher = finetune.run(config(bases["gpt"], labeled, tmp_path / "teacher", max_steps=6))
    student = finetune.run(config(bases["gpt"], labeled, tmp_path / "student", teacher=str(teacher.checkpoint.path),
                                  model="gpt-tiny", d_model=32, n_layer=1, n_head=2, max_steps=6))
    rows = student.comparison
    assert rows["student"]["parameters"] < rows["teacher"]["parameters"]
    assert {"val_accuracy", "examples_per_s"} <= set(rows["student"])
    assert {p["role"] for p in student.checkpoint.parents} >= {"teacher", "base"}
    assert student.checkpoint.stats["distillation"]["student"]["parameters"] == rows["student"]["parameters"]


def test_distillation_loss_is_kl_plus_hard():
    from lmkit.training.objectives.distillation import Distillation

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = torch.nn.Parameter(logits)

    class Objective:
        name, archs, tokens_per_sample, train_windows, val_windows = "classify", ("gpt",), 1, None, None

        def forward(self, model, batch, teacher=False):
            logits = model.logits
            return logits, torch.nn.functional.cross_entropy(logits, batch["targets"])

    student, teacher = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    loss = Distillation(Objective(), Fixed(teacher), temperature=2.0, alpha=0.25).loss(
        Fixed(student), {"targets": torch.tensor([0])})
    p_teacher, q_student = torch.softmax(teacher / 2, -1), torch.softmax(student / 2, -1)
    kl = (p_teacher * (p_teacher.log() - q_student.log())).sum()
    hard = -torch.log_softmax(student, -1)[0, 0]
    assert loss.item() == pytest.approx(0.25 * 4 * kl.item() + 0.75 * hard.item(), rel=1e-5)


# -- bad input ------------------------------------------------------------------------------------------------

def test_bad_inputs_are_refused_before_compute(bases, labeled, dataset, instructions, tmp_path):
    out = tmp_path / "run"

    def refused(message, base=bases["gpt"], data=labeled, **overrides):
        with pytest.raises(UserError, match=message):
            finetune.run(config(base, data, out, **overrides))
        assert not out.exists()  # nothing written

    refused("has no labels; classify needs a labeled dataset", data=dataset, task="classify")
    refused("--task sft: does not fit a bert model", base=bases["bert"], data=instructions)
    refused("--task mlm: does not fit a gpt model", data=dataset, task="mlm")
    refused("is a dataset artifact, expected a checkpoint", base=labeled)
    refused("--lora-rank: an LSTM has no attention", base=bases["lstm"], lora_rank=4)
    refused("--freeze layers:9: the model has 2 blocks", freeze="layers:9")
    refused("--metric accuracy: is a classification metric", data=instructions, metric="accuracy")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "only a prompt"}\n')
    refused(r"bad.jsonl:2: field 'response' is missing", data=bad)
    bad.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    refused(r"bad.jsonl:2: not valid JSON", data=bad)


def test_classifier_base_and_mismatched_teacher_refused(bases, labeled, dataset, tmp_path):
    classifier = finetune.run(config(bases["gpt"], labeled, tmp_path / "clf", max_steps=2)).checkpoint.path
    with pytest.raises(UserError, match="is a classifier checkpoint"):
        finetune.run(config(classifier, labeled, tmp_path / "run"))
    with pytest.raises(UserError, match="cannot teach --task clm"):
        finetune.run(config(bases["gpt"], dataset, tmp_path / "run", teacher=str(classifier), micro_batch=4))


@pytest.fixture(scope="session")
def other_tokenizer_base(tmp_path_factory, text_corpus):
    root = tmp_path_factory.mktemp("other")
    invoke_lmkit("preprocess", str(text_corpus), "--out", str(root / "data"), "--vocab-size", "350", "--workers", "1",
                 check=True)
    return train_tiny(root / "data", root / "gpt", max_steps=1).path


def test_tokenizer_mismatches_refused(other_tokenizer_base, bases, labeled, tmp_path):
    with pytest.raises(UserError, match="was tokenized with another tokenizer"):
        finetune.run(config(other_tokenizer_base, labeled, tmp_path / "run"))
    teacher = finetune.run(config(bases["gpt"], labeled, tmp_path / "teacher", max_steps=2)).checkpoint.path
    with pytest.raises(UserError, match="--teacher .*: its tokenizer differs"):
        finetune.run(config(other_tokenizer_base, labeled.parent / "x", tmp_path / "run2", teacher=str(teacher),
                            task="classify"))


def test_single_class_and_unseen_validation_label_refused(bases, dataset, tmp_path, monkeypatch):
    records = [r for r in labeled_records(40) if r["label"] == "upper"]
    only = preprocess_labeled(dataset, tmp_path / "only", records, "--val-fraction", "0")
    with pytest.raises(UserError, match="every training example has the label 'upper'"):
        finetune.run(config(bases["gpt"], only, tmp_path / "run", micro_batch=2))
    from lmkit.data import labeled

    real = labeled.read_labeled

    def validation_with_a_new_label(dataset_, split):
        found = real(dataset_, "train")
        if split == "validation":  # a validation split whose labels include one training never has
            return labeled.LabeledSplit(found.tokens[:3], found.labels[:3] * 0 + 2)
        return labeled.LabeledSplit(found.tokens, found.labels % 2)

    monkeypatch.setattr(labeled, "read_labeled", validation_with_a_new_label)
    data = preprocess_labeled(dataset, tmp_path / "three", labeled_records(40) + [
        {"text": "A THIRD KIND OF TEXT HERE", "label": "zzz"}], "--val-fraction", "0")
    with pytest.raises(UserError, match="validation label 'zzz' never occurs in training"):
        finetune.run(config(bases["gpt"], data, tmp_path / "run2", micro_batch=2))


def test_sft_targets_are_the_response_and_its_end_only():
    from lmkit.data.instructions import InstructionExample
    from lmkit.training.objectives import BatchLayout
    from lmkit.training.objectives.instruction import InstructionTuning
    from lmkit.vocab import EOS_ID, IGNORE_INDEX

    short = InstructionExample([20, 21, 22, 30, 31, EOS_ID], prompt_length=3)  # prompt 20 21 22, response 30 31
    long = InstructionExample([20, 21, 22, 23, 24, 30, EOS_ID], prompt_length=5)
    objective = InstructionTuning([short, long], [], BatchLayout(2, 1, 1), seed=0, device=torch.device("cpu"), pad=0)
    batch = objective._batch([short, long])
    assert batch["idx"].tolist() == [[20, 21, 22, 30, 31, 0], [20, 21, 22, 23, 24, 30]]
    ignored = IGNORE_INDEX
    # Position t predicts token t + 1: the prompt's last position predicts the first response token.
    assert batch["targets"].tolist() == [[ignored, ignored, 30, 31, EOS_ID, ignored],
                                         [ignored, ignored, ignored, ignored, 30, EOS_ID]]


def test_distillation_of_a_language_model_compares_predicted_positions_only():
    from lmkit.training.objectives.distillation import Distillation
    from lmkit.vocab import IGNORE_INDEX

    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    targets = torch.tensor([[IGNORE_INDEX, 2, 4]])

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

    class Objective:
        name, archs, tokens_per_sample, train_windows, val_windows = "sft", ("gpt",), 3, None, None

        def forward(self, model, batch, teacher=False):
            return model.logits, torch.tensor(0.0)

    loss = Distillation(Objective(), Fixed(teacher_logits), temperature=1.0, alpha=1.0).loss(
        Fixed(student_logits), {"targets": targets})
    p, q = torch.softmax(teacher_logits[0, 1:], -1), torch.softmax(student_logits[0, 1:], -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()  # the first position has no target: left out
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("values,message", [
    ({"find_lr_steps": 2}, "--find-lr-steps: must be at least 3"),
    ({"lora_rank": 4, "freeze": "embeddings"}, "--lora-rank and --freeze"),
    ({"lora_rank": 4, "scratch": True}, "--lora-rank: adapts pretrained weights"),
    ({"n_layer": 1}, "--n-layer: shape a new model, so they need --model PRESET"),
    ({"model": "gpt-tiny", "scratch": True}, "--model and --scratch"),
    ({"template": "no placeholder"}, "--template: must contain {prompt}"),
    ({"freeze": "layers:x"}, "--freeze: unknown part 'layers:x'"),
    ({"epochs": 0}, "--epochs: must be positive"),
    ({"val_fraction": 1.0}, "--val-fraction: must be between 0 and 1"),
    ({"resume": True, "force": True}, "--resume and --force: choose one"),
    ({"beta2": 1.0, "lr": 0}, r"--lr: must be positive(.|\n)*--beta2: must be in \[0, 1\)"),
])
def test_config_refusals(values, message):
    from lmkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        resolve(FinetuneConfig, {}, {"base": "b", "data": "d", "out": "o", "max_steps": 0, **values})


def test_teacher_with_a_shorter_context_refused(bases, labeled, dataset, tmp_path):
    short = train_tiny(dataset, tmp_path / "short", block_size=32, max_steps=1).path
    teacher = finetune.run(config(short, labeled, tmp_path / "teacher", seq_len=32, max_steps=1)).checkpoint.path
    with pytest.raises(UserError, match=r"--teacher .*: its block size 32 is below --seq-len 48"):
        finetune.run(config(bases["gpt"], labeled, tmp_path / "run", teacher=str(teacher)))
    assert not (tmp_path / "run").exists()


def test_warmup_longer_than_half_the_run_is_lowered_and_said(bases, labeled, tmp_path, capsys):
    finetune.run(config(bases["gpt"], labeled, tmp_path / "run", max_steps=6, warmup_steps=20))
    assert "--warmup-steps 20 lowered to 3: half of the 6 steps" in capsys.readouterr().err


def test_batch_size_flags_mean_what_they_mean_in_pretrain(bases, labeled, tmp_path):
    """--accumulation and --batch-tokens, one meaning in every training stage."""
    env = finetune.distributed.setup()
    by_tokens = finetune.plan(config(bases["gpt"], labeled, tmp_path / "a", micro_batch=4, seq_len=32,
                                     batch_tokens=4 * 32 * 3), env)
    by_count = finetune.plan(config(bases["gpt"], labeled, tmp_path / "b", micro_batch=4, seq_len=32,
                                    accumulation=3), env)
    assert by_tokens.layout == by_count.layout and by_count.layout.global_batch == 12
    with pytest.raises(UserError, match="--accumulation 2 and --batch-tokens 384: disagree"):
        finetune.plan(config(bases["gpt"], labeled, tmp_path / "c", micro_batch=4, seq_len=32, accumulation=2,
                             batch_tokens=384), env)


def test_a_final_holding_the_best_weights_is_not_resumed_from(bases, labeled, tmp_path, monkeypatch, capfd):
    """--final best puts the best step's weights in final/ with the last step's optimizer: resuming from it
    would mix the two, so a longer run resumes from the best step's own checkpoint."""
    from lmkit.training.objectives.classification import Classification

    scores = iter([0.5, 0.9, 0.6, 0.7] + [0.1] * 10)
    real = Classification.evaluate
    monkeypatch.setattr(Classification, "evaluate", lambda self, model, max_batches: {
        **real(self, model, max_batches), "val_accuracy": next(scores)})
    first = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", max_steps=8, eval_every=2))
    assert first.checkpoint.stats["best_step"] == 4 and first.checkpoint.stats["step"] == 8
    assert first.checkpoint.stats["resumable"] is False  # saved without the optimizer state
    capfd.readouterr()
    longer = finetune.run(config(bases["gpt"], labeled, tmp_path / "run", max_steps=10, eval_every=2,
                                 auto_resume=True))
    assert "resuming from " + str(tmp_path / "run" / "step-00000004") in capfd.readouterr().err
    assert longer.checkpoint.stats["step"] == 10


# -- defaults that transfer (issue 16) ------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,expected", [(2, None), (6, "balanced")])
def test_class_weights_auto_weighs_only_an_imbalanced_set(bases, dataset, tmp_path, ratio, expected):
    records = labeled_records(120)
    upper = [r for r in records if r["label"] == "upper"][:6 * ratio]
    records = upper + [r for r in records if r["label"] == "lower"][:6]
    data = preprocess_labeled(dataset, tmp_path / "data", records, "--val-fraction", "0")
    plan = finetune.plan(config(bases["gpt"], data, tmp_path / "run", micro_batch=2), finetune.distributed.setup())
    objective = plan.spec.build(plan.inputs).objective
    assert (objective.class_weights is None) == (expected is None)
    assert any("class weights: balanced" in note for note in plan.inputs.notes) == (expected is not None)


def test_learning_rate_follows_the_width_unless_given(bases, labeled, tmp_path):
    from lmkit.stages.finetune_config import FinetuneConfig

    def rate(**values):
        return resolve(FinetuneConfig, {}, {"base": "b", "data": "d", "out": "o", **values}).learning_rate(256)

    assert rate() == (pytest.approx(0.06 / 256), "auto: 0.06 / d_model 256")
    assert rate(lora_rank=4)[0] == pytest.approx(0.6 / 256)
    assert rate(scratch=True)[0] == pytest.approx(0.5 / 256)
    assert rate(lr=1e-2) == (1e-2, "--lr")
    values = {**FAST}
    values.pop("lr")
    plan = finetune.plan(resolve(FinetuneConfig, {}, {"base": str(bases["gpt"]), "data": str(labeled),
                                                      "out": str(tmp_path / "run"), **values}),
                         finetune.distributed.setup())
    width = read_checkpoint(bases["gpt"]).model_config.d_model
    assert plan.options.lr == pytest.approx(0.06 / width)


def test_default_pooling_by_architecture_and_origin():
    from lmkit.models.classifier import default_pooling
    from lmkit.models.presets import model_config

    gpt, bert, lstm = (model_config(name, 100) for name in ("gpt-tiny", "bert-tiny", "lstm-small"))
    assert default_pooling(gpt, pretrained=True) == "mean" and default_pooling(bert, pretrained=True) == "mean"
    assert default_pooling(lstm, pretrained=True) == "last"
    # From transformers, what its classifiers read (the result exports back); a fresh model is lmkit's own.
    assert default_pooling(gpt, pretrained=True, imported=True) == "last"
    assert default_pooling(bert, pretrained=True, imported=True) == "cls"
    assert default_pooling(gpt, pretrained=False, imported=True) == "mean"


def test_by_default_validation_runs_twice_an_epoch_and_stops_early(bases, labeled, tmp_path):
    values = {key: value for key, value in FAST.items() if key not in ("max_steps", "eval_every")}
    run_dir = tmp_path / "run"
    result = finetune.run(resolve(FinetuneConfig, {}, {"base": str(bases["gpt"]), "data": str(labeled),
                                                        "out": str(run_dir), **values, "epochs": 30, "lr": 0.3}))
    plan = finetune.plan(resolve(FinetuneConfig, {}, {"base": str(bases["gpt"]), "data": str(labeled),
                                                      "out": str(tmp_path / "plan"), **values, "epochs": 30}),
                         finetune.distributed.setup())
    examples = len(plan.spec.build(plan.inputs).objective.train)
    assert examples == len(labeled_splits(artifacts.load(labeled), 0.1, 0)[0].tokens)  # --long-text cut: the texts
    per_epoch = -(-examples // FAST["micro_batch"])
    evaluated = [step for step, _ in metrics(run_dir, "val_accuracy")]
    assert evaluated[:2] == [-(-per_epoch // 2), 2 * -(-per_epoch // 2)]
    # A rate this high stops improving at once: four evaluations later (two epochs) the run ends, well before 30 epochs.
    stats = result.checkpoint.stats
    assert stats["step"] < 30 * per_epoch and len(evaluated) - evaluated.index(stats["best_step"]) - 1 == 4


def test_long_texts_train_on_every_window_and_validate_on_the_aggregate(bases, labeled, tmp_path):
    from lmkit.data.framing import chunk_texts

    built = {}
    for long_text in ("cut", "max"):
        plan = finetune.plan(config(bases["gpt"], labeled, tmp_path / long_text, long_text=long_text, chunk_stride=5),
                             finetune.distributed.setup())
        built[long_text] = plan.spec.build(plan.inputs)
    cut, chunked = built["cut"].objective, built["max"].objective
    assert built["cut"].extra["head"]["long_text"] == "cut" and "chunk_stride" not in built["cut"].extra["head"]
    assert built["max"].extra["head"]["long_text"] == "max" and built["max"].extra["head"]["chunk_stride"] == 5
    windows, owner = chunk_texts(cut.train, "gpt", cut.seq_len, "max", 5, max_chunks=8)
    assert max(np.bincount(owner)) == 8  # the longest texts give 8 windows, evenly spread
    assert chunked.train == windows and chunked.train_labels.tolist() == cut.train_labels[owner].tolist()
    assert len(windows) > len(cut.train)  # the labeled texts are longer than the tiny window


def test_packed_sft_equals_unpacked_per_example_losses(bases, instructions, tmp_path):
    import torch.nn.functional as F

    from lmkit.training.objectives import BatchLayout
    from lmkit.training.objectives.instruction import InstructionTuning

    plan = finetune.plan(config(bases["gpt"], instructions, tmp_path / "run", template="Q: {prompt}\nA: ",
                                seq_len=128, pack=True), finetune.distributed.setup())
    packed_objective = plan.spec.build(plan.inputs).objective
    assert packed_objective.pack_width == plan.inputs.seq_len
    examples = packed_objective.train[:8]
    unpacked = InstructionTuning(examples, [], BatchLayout(8, 1, 1), 0, torch.device("cpu"), 0)
    model = read_checkpoint(bases["gpt"]).inference_model()
    packed, plain = packed_objective._batch(examples), unpacked._batch(examples)
    assert packed["idx"].shape[0] < plain["idx"].shape[0]  # fewer rows
    with torch.no_grad():
        assert float(packed_objective.loss(model, packed)) == pytest.approx(float(unpacked.loss(model, plain)),
                                                                            abs=1e-5)
        logits, _ = packed_objective.forward(model, packed)
        losses = F.cross_entropy(logits.flatten(0, 1), packed["targets"].flatten(), reduction="none",
                                 ignore_index=-100).view_as(packed["targets"])
        for i, example in enumerate(examples):  # each example's own loss, alone and packed
            alone = unpacked._batch([example])
            own_logits, own_loss = model(alone["idx"], alone["targets"])
            assert float(losses[packed["segments"] == i].sum() / (packed["targets"][packed["segments"] == i] != -100)
                         .sum()) == pytest.approx(float(own_loss), abs=1e-5)
    refused = finetune.plan(config(bases["lstm"], instructions, tmp_path / "lstm", template="Q: {prompt}\nA: ",
                                   pack=True),
                            finetune.distributed.setup())
    with pytest.raises(UserError, match="--pack: packs examples with a block-diagonal attention mask"):
        refused.spec.build(refused.inputs)


def test_block_size_extends_a_rotary_model_and_refuses_what_cannot_extend(bases, dataset, tmp_path):
    result = finetune.run(config(bases["gpt"], dataset, tmp_path / "long", block_size=256, max_steps=2,
                                 eval_every=0, seq_len=0))
    extended = read_checkpoint(result.checkpoint.path).model_config
    base = read_checkpoint(bases["gpt"]).model_config
    assert (extended.block_size, extended.rope_scaling, extended.rope_factor, extended.rope_original_length) == \
        (256, "linear", 256 / base.block_size, base.block_size)
    assert result.checkpoint.config["seq_len"] == 256  # --seq-len follows the new context
    ntk = finetune.plan(config(bases["gpt"], dataset, tmp_path / "ntk", block_size=512, rope_scaling="ntk",
                               rope_factor=3.0), finetune.distributed.setup())
    assert (ntk.model_config.rope_scaling, ntk.model_config.rope_factor) == ("ntk", 3.0)
    learned = train_tiny(dataset, tmp_path / "learned", model="gpt2-tiny").path
    for base_path, message, size in ((learned, "learned position embeddings and no more; a longer context needs a "
                                      "rotary model", 256),
                                     (result.checkpoint.path,
                                      r"the base already scales its rotary positions \(linear\)", 1024)):
        with pytest.raises(UserError, match=message):
            finetune.run(config(base_path, dataset, tmp_path / "refused", block_size=size))
        assert not (tmp_path / "refused").exists()
    with pytest.raises(UserError, match="--rope-scaling and --rope-factor go with --block-size"):
        config(bases["gpt"], dataset, tmp_path / "x", rope_scaling="ntk")
    with pytest.raises(UserError, match="--block-size 64: shorter than the base's 128; no rope scaling is needed"):
        finetune.plan(config(bases["gpt"], dataset, tmp_path / "short", block_size=64, rope_scaling="ntk"),
                      finetune.distributed.setup())
    shorter = finetune.plan(config(bases["gpt"], dataset, tmp_path / "short", block_size=64, seq_len=0),
                            finetune.distributed.setup())
    assert (shorter.model_config.block_size, shorter.model_config.rope_scaling) == (64, "none")


# -- each task reads its own options; another task's are refused ---------------------------------------------
@pytest.mark.parametrize("task,values,message", [
    ("sft", {"pooling": "mean"}, "--pooling: read by --task classify, not by --task sft; drop it"),
    ("sft", {"class_weights": "balanced"}, "--class-weights: read by --task classify, not by --task sft; drop it"),
    ("sft", {"long_text": "mean"}, "--long-text: read by --task classify, not by --task sft; drop it"),
    ("sft", {"token_dropout": 0.1}, "--token-dropout: read by --task classify, not by --task sft; drop it"),
    ("sft", {"chunk_stride": 8}, "--chunk-stride: read by --task classify or qa, not by --task sft; drop it"),
    ("sft", {"max_answer_tokens": 10}, "--max-answer-tokens: read by --task qa, not by --task sft; drop it"),
    ("classify", {"template": "Q: {prompt}\nA: "}, "--template: read by --task sft, not by --task classify; drop it"),
    ("classify", {"prompt_field": "question"}, "--prompt-field: read by --task sft or grpo, not by --task classify"),
    ("classify", {"response_field": "answer"}, "--response-field: read by --task sft, not by --task classify"),
    ("classify", {"pack": True}, "--pack: read by --task sft or chat, not by --task classify; drop it"),
    ("classify", {"mask_prob": 0.2}, "--mask-prob: read by --task mlm, not by --task classify; drop it"),
    ("classify", {"mask_replace": 0.7}, "--mask-replace: read by --task mlm, not by --task classify"),
    ("classify", {"mask_random": 0.2}, "--mask-random: read by --task mlm, not by --task classify"),
    ("classify", {"temperature": 3.0}, "--temperature: read by --teacher, not by --task classify; drop it"),
    ("classify", {"distill_alpha": 0.9}, "--distill-alpha: read by --teacher, not by --task classify; drop it"),
    ("clm", {"val_fraction": 0.2},
     "--val-fraction: read by --task classify, sft, chat, qa, dpo, orpo or grpo, not by --task clm; drop it"),
    ("clm", {"max_train_examples": 5},
     "--max-train-examples: read by --task classify, sft, chat, qa, dpo, orpo or grpo, not by --task clm"),
    ("sft", {"pooling": "mean", "class_weights": "none", "mask_prob": 0.2},
     "--pooling and --class-weights (read by --task classify), --mask-prob (read by --task mlm): not read by "
     "--task sft; drop them"),
])
def test_an_option_the_task_does_not_read_is_refused(bases, labeled, dataset, instructions, tmp_path, task, values,
                                                     message):
    data = {"classify": labeled, "sft": instructions, "clm": dataset}[task]
    with pytest.raises(UserError) as caught:
        finetune.plan(config(bases["gpt"], data, tmp_path / "run", task=task, **values), finetune.distributed.setup())
    assert message in str(caught.value) and "\n" not in str(caught.value)  # one line, every flag in it
    assert not (tmp_path / "run").exists()


def test_options_each_task_reads_are_taken_and_a_dumped_config_reads_back(bases, labeled, instructions, qa_file,
                                                                          pair_dataset, pair_classifier, tmp_path):
    import tomllib

    from lmkit import config as config_lib

    env = finetune.distributed.setup()
    chosen = {  # every task takes the options it reads, shared ones (--chunk-stride, --max-train-examples) included
        "classify": (bases["gpt"], labeled, {"pooling": "last", "class_weights": "balanced", "long_text": "mean",
                                             "chunk_stride": 8, "token_dropout": 0.1, "max_train_examples": 20,
                                             "val_fraction": 0.2}),
        "sft": (bases["gpt"], instructions, {"template": "Q: {prompt}\nA: ", "prompt_field": "prompt", "pack": True,
                                             "max_train_examples": 20, "val_fraction": 0.2}),
        "qa": (bases["bert"], qa_file, {"chunk_stride": 8, "max_answer_tokens": 10, "max_train_examples": 20}),
    }
    for task, (base, data, values) in chosen.items():
        planned = finetune.plan(config(base, data, tmp_path / task, task=task, **values), env)
        assert {name: getattr(planned.inputs.options, name) for name in values} == values
    # distillation's options with --teacher
    planned = finetune.plan(config(bases["bert"], pair_dataset, tmp_path / "distill", teacher=str(pair_classifier),
                                   temperature=3.0, distill_alpha=0.9), env)
    assert planned.inputs.teacher is not None
    # --print-config lists every option (at its default): fed back with --config, nothing is refused
    dumped = tomllib.loads(config_lib.to_toml(config(bases["gpt"], instructions, tmp_path / "dump")))
    planned = finetune.plan(resolve(FinetuneConfig, dumped, {}), env)
    assert planned.spec.name == "sft" and planned.inputs.options.template == dumped["template"]


def test_a_refusal_under_task_auto_names_the_task_it_chose(bases, instructions, tmp_path):
    with pytest.raises(UserError, match=f"--pooling: read by --task classify, not by --task auto \\(sft for "
                                        f"{instructions}\\); drop it"):
        finetune.plan(config(bases["gpt"], instructions, tmp_path / "run", pooling="cls"),
                      finetune.distributed.setup())


def test_resume_invariants_are_the_fields_marked_resume():
    """The settings a resumed run must keep are marked on their fields (option(..., resume=True)); these are the
    sets the stages kept by hand before, unchanged."""
    from lmkit.stages.pretrain_config import PretrainConfig
    from lmkit.training.rundir import resume_invariants

    shared = {"seq_len", "micro_batch", "accumulation", "batch_tokens", "seed", "optimizer"}
    assert set(resume_invariants(PretrainConfig)) == shared | {"objective", "shard"}
    assert set(resume_invariants(FinetuneConfig)) == shared | {
        "task", "lora_rank", "lora_alpha", "lora_dropout", "freeze", "pooling", "scratch", "model", "n_layer",
        "n_head", "d_model", "d_ff", "dropout", "val_fraction", "max_train_examples", "template", "prompt_field",
        "response_field", "token_dropout", "class_weights", "temperature", "distill_alpha", "mask_prob",
        "mask_replace", "mask_random", "chunk_stride", "max_answer_tokens",
        "group_by_length",  # (issue 30: which examples share a batch is the data order)
        "chat_template", "system_prompt", "last_turn_only", "skip_bad_records",  # chat: what the data reads as
        "beta", "reference"}  # preference tuning: the loss's strength and the model it is measured against
