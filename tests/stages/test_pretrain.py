"""The pretrain stage through its Python API: real (tiny) training, checkpoints, exact resume."""

import json
import shutil

import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training import loop
from lmkit.training.objectives.language_modeling import CausalLM

FAST = {"seq_len": 32, "micro_batch": 4, "max_steps": 12, "eval_every": 4, "eval_batches": 2,
        "checkpoint_every": 6, "warmup_steps": 2, "lr": 3e-3, "precision": "fp32", "log_every": 1}


def config(data, out, **overrides):
    return resolve(PretrainConfig, {}, {"dataset": str(data), "out": str(out), **FAST, **overrides})


def metrics(run_dir, key="loss"):
    return [(r["step"], r[key]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if key in r]


def weights(path):
    return read_checkpoint(path).build_model().state_dict()


def test_gpt_run_writes_checkpoints_and_learns(dataset, tmp_path):
    final = pretrain.run(config(dataset, tmp_path / "run", max_steps=30, checkpoint_every=10))
    assert final.path == tmp_path / "run" / "final" and final.stats["step"] == 30
    steps = sorted(p.name for p in (tmp_path / "run").glob("step-*"))
    best = f"step-{final.stats['best_step']:08d}"
    assert "step-00000030" in steps and best in steps and len(steps) <= 3  # the last 2 and the best
    assert {"config.toml", "final", "metrics.jsonl"} <= {p.name for p in (tmp_path / "run").iterdir()}
    losses = [loss for _, loss in metrics(tmp_path / "run")]
    assert losses[-1] < losses[0] - 0.5  # it learns
    val = metrics(tmp_path / "run", "val_bpb")
    assert val and all(bpb > 0 for _, bpb in val)
    checkpoint = read_checkpoint(final.path)
    assert checkpoint.objective == "clm" and artifacts.load(checkpoint.tokenizer_path).kind == "tokenizer"
    roles = {p["role"] for p in final.parents}
    assert roles == {"dataset", "tokenizer"} and final.parent_path("dataset") == dataset.resolve()


@pytest.mark.parametrize("overrides", [
    {"dropout": 0.1},                         # the torch RNG state matters
    {"model": "bert-tiny", "dropout": 0.1},   # masking and the MLM head
    {"batch_tokens": 256},                    # gradient accumulation (2 micro-batches)
    {"model": "bert-tiny", "share_layers": 1, "embedding_dim": 32},  # ALBERT's sharing: saved once, resumed
    {"model": "encoder-tiny", "objective": "mlm+sop", "dropout": 0.1},  # pairs, swaps and masks by position
    {"model": "bert-tiny", "objective": "mlm+nsp"},  # random second segments by position
], ids=["gpt-dropout", "bert", "accumulation", "albert-sharing", "sop", "nsp"])
def test_resume_equals_uninterrupted_bit_for_bit(dataset, tmp_path, overrides):
    full = pretrain.run(config(dataset, tmp_path / "full", keep_last=5, **overrides))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "full" / "step-00000006", partial / "step-00000006")
    resumed = pretrain.run(config(dataset, partial, keep_last=5, resume=True, **overrides))
    for name, tensor in weights(full.path).items():
        assert torch.equal(tensor, weights(resumed.path)[name]), name
    assert metrics(tmp_path / "full")[6:] == metrics(partial)  # same losses after the checkpoint, exactly


@pytest.mark.parametrize("model", ["gpt-tiny", "bert-tiny"])
def test_resume_with_another_layout_of_the_same_global_batch(dataset, tmp_path, model):
    """Elastic resume in one process: 2 micro-batches of 4 become 1 of 8 (what N -> M processes changes)."""
    full = pretrain.run(config(dataset, tmp_path / "full", keep_last=5, model=model, batch_tokens=256))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "full" / "step-00000006", partial / "step-00000006")
    with pytest.raises(UserError, match="global batch of 8 sequences per step; this launch makes 4 .*resume with "
                                        "--accumulation 2 or --batch-tokens 256"):
        pretrain.run(config(dataset, partial, keep_last=5, model=model, resume=True))
    assert not (partial / "final").exists() and not (partial / "metrics.jsonl").exists()
    resumed = pretrain.run(config(dataset, partial, keep_last=5, model=model, resume=True, micro_batch=8))
    # the same samples and masks; only the order of float sums differs
    assert [loss for _, loss in metrics(partial)] == pytest.approx([loss for _, loss in metrics(tmp_path / "full")[6:]],
                                                                   rel=1e-5, abs=1e-5)
    for name, tensor in weights(full.path).items():
        assert torch.allclose(tensor, weights(resumed.path)[name], rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("model,objective", [("bert-tiny", "mlm"), ("lstm-small", "clm")])
def test_bert_and_lstm_train(dataset, tmp_path, model, objective):
    overrides = {"d_model": 64} if model == "lstm-small" else {}
    final = pretrain.run(config(dataset, tmp_path / "run", model=model, max_steps=8, **overrides))
    assert read_checkpoint(final.path).objective == objective
    if objective == "mlm":
        assert any("val_mlm_accuracy" in line for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())


@pytest.mark.parametrize("task", ["sop", "nsp"])
def test_sentence_pair_pretraining_reports_each_loss_and_adds_segments_and_a_sentence_head(dataset, tmp_path, task,
                                                                                           capfd):
    import re

    import numpy as np

    from lmkit.data.packing import load_stream
    from lmkit.data.sentence_pairs import find_boundaries, piece_classes
    from lmkit.tokenizer import load as load_tokenizer
    from lmkit.vocab import LMKIT, SEP_ID

    run = tmp_path / "run"
    final = pretrain.run(config(dataset, run, model="encoder-tiny", objective=f"mlm+{task}", max_steps=8))
    # the start says how much of the training text the pairs read (documents with two sentences or more)
    said = re.search(rf"{task}: ([\d,]+) sentence boundaries in ([\d,]+) of ([\d,]+) training documents, (\d+)% of "
                     r"the training tokens(; the others are one sentence each)?", capfd.readouterr().err)
    stream = load_stream(artifacts.load(dataset), "train", SEP_ID)
    tokenizer = load_tokenizer(dataset / "tokenizer")
    boundaries = find_boundaries(stream, piece_classes([tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)],
                                                       LMKIT))
    _, lengths = stream.document_spans()
    share = lengths[np.unique(boundaries.documents)].sum() / lengths.sum()
    assert said and int(said[1].replace(",", "")) == len(boundaries) and int(said[3].replace(",", "")) == len(lengths)
    assert int(said[4]) == round(100 * share) and bool(said[5]) == (share < 0.8)
    checkpoint = read_checkpoint(final.path)
    model_config = checkpoint.model_config
    assert checkpoint.objective == f"mlm+{task}" and checkpoint.masked_lm
    assert model_config.type_vocab_size == 2 and model_config.pooler and model_config.sentence_head
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluation = [r for r in records if "val_loss" in r][-1]
    assert evaluation["val_loss"] == pytest.approx(evaluation["val_mlm_loss"] + evaluation[f"val_{task}_loss"])
    assert 0 <= evaluation["val_mlm_accuracy"] <= 1 and 0 <= evaluation[f"val_{task}_accuracy"] <= 1
    state = checkpoint.build_model().state_dict()
    assert state["sentence_head.weight"].shape == (2, model_config.d_model) and "embeddings.type_emb.weight" in state


def test_sentence_pairs_on_one_sentence_documents_are_refused_before_compute(dataset, tmp_path):
    from tests.conftest import invoke_lmkit, paragraphs

    corpus = tmp_path / "lines"
    corpus.mkdir()  # one document per line, each the first sentence of a paragraph, without its full stop
    (corpus / "lines.txt").write_text("\n\n".join(p.split(". ")[0].rstrip(".") for p in paragraphs()) + "\n")
    invoke_lmkit("preprocess", str(corpus), "--out", str(tmp_path / "data"), "--tokenizer", str(dataset / "tokenizer"),
                 check=True)
    with pytest.raises(UserError, match="needs documents of two sentences or more .* each of its \\d+ training "
                                        "documents is one sentence or line"):
        pretrain.run(config(tmp_path / "data", tmp_path / "run", model="encoder-tiny", objective="mlm+sop"))
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(UserError, match="--objective mlm\\+sop: does not fit a gpt model"):
        pretrain.run(config(dataset, tmp_path / "gpt", objective="mlm+sop"))


def test_rerun_is_up_to_date_and_existing_run_is_protected(dataset, tmp_path):
    first = pretrain.run(config(dataset, tmp_path / "run", max_steps=4, eval_every=0))
    again = pretrain.run(config(dataset, tmp_path / "run", max_steps=4, eval_every=0))
    assert again.up_to_date and again.id == first.id
    with pytest.raises(UserError, match="already holds a run; use --resume to continue it or --force"):
        pretrain.run(config(dataset, tmp_path / "run", max_steps=6, eval_every=0))
    assert artifacts.load(tmp_path / "run" / "final").id == first.id
    longer = pretrain.run(config(dataset, tmp_path / "run", max_steps=6, eval_every=0, resume=True))
    assert longer.stats["step"] == 6
    forced = pretrain.run(config(dataset, tmp_path / "run", max_steps=2, eval_every=0, force=True))
    assert forced.stats["step"] == 2


def test_nan_loss_stops_before_the_update(dataset, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_loss = CausalLM.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        calls["n"] += 1
        loss = real_loss(self, model, batch)
        return loss * float("nan") if calls["n"] == 9 else loss

    monkeypatch.setattr(CausalLM, "loss", poisoned)
    steps = count_optimizer_steps(monkeypatch)
    with pytest.raises(loop.NonFiniteError, match=r"step 9: the loss is nan.*last good checkpoint is .*step-00000008"):
        pretrain.run(config(dataset, run_dir))
    good = weights(run_dir / "step-00000008")  # the best so far, saved at the step-8 evaluation
    assert not (run_dir / "final").exists() and steps == [1] * 8  # step 9 never reached the optimizer
    assert artifacts.load(run_dir / "step-00000008").stats["step"] == 8
    for tensor in good.values():
        assert torch.isfinite(tensor).all()


def test_nan_gradient_stops_before_the_update(dataset, tmp_path, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def poisoned(parameters, max_norm):
        calls["n"] += 1
        norm = real(parameters, max_norm)
        return norm * float("inf") if calls["n"] == 3 else norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    steps = count_optimizer_steps(monkeypatch)
    with pytest.raises(loop.NonFiniteError, match="step 3: the gradient norm is inf.*no checkpoint was written yet"):
        pretrain.run(config(dataset, tmp_path / "run"))
    assert steps == [1, 1]


def count_optimizer_steps(monkeypatch):
    from lmkit.training.optim import Optimizers

    calls = []
    real_step = Optimizers.step
    monkeypatch.setattr(Optimizers, "step", lambda self: calls.append(1) or real_step(self))
    return calls


def test_pruning_keeps_an_older_best(dataset, tmp_path, monkeypatch):
    losses = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])  # best at the second evaluation (step 4)
    monkeypatch.setattr(CausalLM, "evaluate", lambda self, model, batches: {"val_loss": next(losses)})
    final = pretrain.run(config(dataset, tmp_path / "run", eval_every=2, checkpoint_every=2, keep_last=1))
    steps = sorted(p.name for p in (tmp_path / "run").glob("step-*"))
    assert steps == ["step-00000004", "step-00000012"] and final.stats["best_step"] == 4


def test_stop_on_max_tokens_with_a_decaying_schedule(dataset, tmp_path):
    final = pretrain.run(config(dataset, tmp_path / "run", max_steps=0, max_tokens=128 * 5, eval_every=0))
    assert final.stats["step"] == 5 and final.stats["tokens"] == 640
    lrs = [lr for _, lr in metrics(tmp_path / "run", "lr")]
    assert lrs[-1] < max(lrs)  # the cosine decayed over the 5 steps the token budget allows


def test_early_stopping_keeps_the_best(dataset, tmp_path):
    final = pretrain.run(config(dataset, tmp_path / "run", max_steps=200, eval_every=2, patience=2, lr=0.05,
                                warmup_steps=0, checkpoint_every=0))
    assert final.stats["step"] < 200
    best = final.stats["best_step"]
    assert (tmp_path / "run" / f"step-{best:08d}").is_dir()


@pytest.mark.parametrize("overrides,message", [
    ({"model": "gpt-tiny", "objective": "mlm"}, "--objective mlm: does not fit a gpt model"),
    ({"seq_len": 4096}, "--seq-len 4096 exceeds the model's block size 128"),
    ({"micro_batch": 100000}, "fewer than one batch"),
    ({"batch_tokens": 100}, "--batch-tokens 100 is not a multiple"),
    ({"model": "gpt-huge"}, "gpt-huge"),
])
def test_bad_requests_refused_before_compute(dataset, tmp_path, overrides, message):
    first = pretrain.run(config(dataset, tmp_path / "run", max_steps=2, eval_every=0))
    with pytest.raises(UserError, match=message):
        pretrain.run(config(dataset, tmp_path / "run", force=True, **overrides))
    assert artifacts.load(tmp_path / "run" / "final").id == first.id  # --force deletes nothing before the checks


def test_damaged_dataset_refused(dataset, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(dataset, copy)
    shard = copy / "train-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match="train-00000.arrow: content changed"):
        pretrain.run(config(copy, tmp_path / "run"))


def test_init_from_checks_the_model(dataset, tmp_path):
    base = pretrain.run(config(dataset, tmp_path / "base", max_steps=2, eval_every=0))
    child = pretrain.run(config(dataset, tmp_path / "child", max_steps=2, eval_every=0, init_from=str(base.path)))
    assert any(p["role"] == "init" for p in child.parents)
    grandchild = pretrain.run(config(dataset, tmp_path / "gc", max_steps=1, lr=1e-9, warmup_steps=0, eval_every=0,
                                     init_from=str(base.path)))
    for name, tensor in weights(base.path).items():  # started from base's weights (a 1e-9 step barely moves them)
        assert torch.allclose(tensor, weights(grandchild.path)[name], atol=1e-6), name
    with pytest.raises(UserError, match="--init-from .* differs from the one requested"):
        pretrain.run(config(dataset, tmp_path / "other", max_steps=2, init_from=str(base.path), d_model=32))


def test_output_under_a_file_is_refused(dataset, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="a parent of --out is a file"):
        pretrain.run(config(dataset, tmp_path / "file" / "run"))


@pytest.mark.parametrize("changed,flag", [({"seq_len": 16}, "--seq-len"), ({"seed": 5}, "--seed"),
                                          ({"d_model": 32}, "the model")])
def test_resume_refuses_settings_that_fix_the_data_order_or_model(dataset, tmp_path, changed, flag):
    pretrain.run(config(dataset, tmp_path / "run", max_steps=2, eval_every=0))
    with pytest.raises(UserError, match=f"cannot resume with a different {flag}"):
        pretrain.run(config(dataset, tmp_path / "run", max_steps=4, eval_every=0, resume=True, **changed))
    # the limits may change
    assert pretrain.run(config(dataset, tmp_path / "run", max_steps=4, eval_every=0, resume=True)).stats["step"] == 4


@pytest.mark.parametrize("overrides,message", [
    ({"shard": True}, "--shard: needs torchrun"),
    ({"shard": True, "model": "lstm-small"}, "--shard: FSDP2 shards transformer blocks"),
])
def test_shard_refusals(dataset, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        pretrain.run(config(dataset, tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("values,message", [
    ({"max_steps": 0, "max_time": "1m", "schedule": "cosine"},
     "--schedule cosine: decays over a known number of steps"),
    ({"mask_prob": 0.0}, "--mask-prob: must be positive"),
    ({"max_steps": 0}, "give at least one limit"),
    ({"resume": True, "force": True}, "--resume and --force: choose one"),
])
def test_config_refusals(dataset, tmp_path, values, message):
    from lmkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config(dataset, tmp_path / "run", **values)


def test_a_mixture_of_datasets_samples_by_share_records_its_sources_and_resumes_exactly(dataset, tmp_path):
    from tests.conftest import invoke_lmkit

    other = tmp_path / "other"
    source = tmp_path / "other.txt"
    source.write_text("\n\n".join(f"Another corpus, paragraph number {i}, with words of its own." for i in range(300)))
    invoke_lmkit("preprocess", str(source), "--out", str(other), "--tokenizer", str(dataset / "tokenizer"), "--workers",
                 "1", "--no-near-dedup", check=True)
    mixed = {"dataset": f"{dataset},{other}", "weights": [0.75, 0.25], "keep_last": 5}
    full = pretrain.run(config(dataset, tmp_path / "full", **mixed))
    sources = full.stats["mixture"]["sources"]
    assert [s["share"] for s in sources] == pytest.approx([0.75, 0.25], abs=1e-3)
    assert [s["id"] for s in sources] == [artifacts.load(dataset).id, artifacts.load(other).id]
    assert all(s["epochs"] > 0 for s in sources) and full.stats["mixture"]["samples"] == 12 * 4
    planned = pretrain.plan(config(dataset, tmp_path / "plan", **mixed), pretrain.distributed.setup())
    mixture = planned.spec.build(planned.inputs).objective.train_windows  # the windows the run reads
    assert [s["windows"] for s in sources] == [part.count for part in mixture.parts]
    assert [p["role"] for p in full.manifest["inputs"]["artifacts"]][:2] == ["dataset", "dataset"]
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "full" / "step-00000006", partial / "step-00000006")
    resumed = pretrain.run(config(dataset, partial, resume=True, **mixed))
    for name, tensor in weights(full.path).items():
        assert torch.equal(tensor, weights(resumed.path)[name]), name
    # the same mixture as a file (paths relative to it) is the same run: up to date
    (tmp_path / "mix.toml").write_text(f'[[source]]\ndataset = "{dataset}"\nweight = 0.75\n\n'
                                       '[[source]]\ndataset = "other"\nweight = 0.25\n')
    from_file = resolve(PretrainConfig, {}, {"mixture": str(tmp_path / "mix.toml"), "out": str(tmp_path / "full"),
                                             **FAST, "keep_last": 5})
    again = pretrain.run(from_file)
    assert again.up_to_date and again.id == full.id


@pytest.mark.parametrize("text,message", [
    ('[[source]]\ndataset = "a"\nweight = 1\n', r"give two or more \[\[source\]\] tables"),
    ('[[source]]\ndataset = "a"\nweight = 1\n[[source]]\ndataset = "b"\n',
     r"\[\[source\]\] 2: give every source a weight, or a top-level alpha"),
    ('[[source]]\ndataset = "a"\nweight = -1\n[[source]]\ndataset = "b"\nweight = 0\n',
     "weight: must be non-negative and sum to a positive number"),
    ('alpha = 3\n[[source]]\ndataset = "a"\n[[source]]\ndataset = "b"\n', r"alpha: must be in \[0, 1\]"),
    ('[[source]]\npath = "a"\n[[source]]\ndataset = "b"\n', r"\[\[source\]\] 1: unknown key 'path'"),
    ('alpha = 0.5\n[[source]]\ndataset = "a"\nweight = 1\n[[source]]\ndataset = "b"\n',
     r"\[\[source\]\] 1: has a weight and the file an alpha; give one"),
    ('[[source]\n', r"not valid TOML \(.*line 1"),
])
def test_a_bad_mixture_file_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "mix.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"{path}: {message}"):
        resolve(PretrainConfig, {}, {"mixture": str(path), "out": str(tmp_path / "run")}).with_mixture()


@pytest.mark.parametrize("values,message", [
    ({"weights": [0.5, 0.5]}, "--weights: mixes several datasets; give two or more DATASET arguments"),
    ({"dataset": "a,b", "weights": [1.0]}, "--weights: 1 weights for 2 datasets"),
    ({"dataset": "a,b", "weights": [0.0, 0.0]}, "--weights: must be non-negative and sum to a positive number"),
    ({"dataset": "a,b", "mix_alpha": 2.0}, r"--mix-alpha: must be in \[0, 1\]"),
    ({"mixture": "mix.toml"}, "--mixture: names the datasets and their weights itself; drop the DATASET arguments"),
])
def test_mixture_flags_are_checked(dataset, tmp_path, values, message):
    with pytest.raises(UserError, match=message):
        config(dataset, tmp_path / "run", **values)


def test_datasets_with_different_tokenizers_are_not_mixed(dataset, tmp_path):
    from tests.conftest import invoke_lmkit

    source = tmp_path / "other.txt"
    source.write_text("\n\n".join(f"Paragraph {i} of a corpus with its own tokenizer." for i in range(200)))
    invoke_lmkit("preprocess", str(source), "--out", str(tmp_path / "other"), "--vocab-size", "350", "--workers", "1",
                 check=True)
    with pytest.raises(UserError, match=r"other: was tokenized with another tokenizer .* a mixture needs one "
                                        r"tokenizer: preprocess it with --tokenizer"):
        pretrain.run(config(dataset, tmp_path / "run", dataset=f"{dataset},{tmp_path / 'other'}"))
    assert not (tmp_path / "run").exists()


def test_masking_options_are_refused_for_causal_lm_and_read_by_masked_lm(dataset, tmp_path):
    env = pretrain.distributed.setup()
    cases = [({"mask_prob": 0.2, "mask_random": 0.05}, "--mask-prob and --mask-random: read by --objective mlm, "
              "mlm+nsp or mlm+sop, not by --objective auto (clm for a gpt model); drop them"),
             ({"objective": "clm", "mask_replace": 0.5}, "--mask-replace: read by --objective mlm, mlm+nsp or "
              "mlm+sop, not by --objective clm; drop it")]
    for values, message in cases:
        with pytest.raises(UserError) as caught:
            pretrain.run(config(dataset, tmp_path / "gpt", **values))
        assert str(caught.value) == message
        assert not (tmp_path / "gpt").exists()
    for model, objective in (("bert-tiny", "mlm"), ("encoder-tiny", "mlm+sop")):
        planned = pretrain.plan(config(dataset, tmp_path / objective, model=model, objective=objective,
                                       mask_prob=0.2, mask_replace=0.5), env)
        assert (planned.inputs.options.mask_prob, planned.inputs.options.mask_replace) == (0.2, 0.5)
    assert pretrain.plan(config(dataset, tmp_path / "clm", mask_prob=0.15), env).spec.name == "clm"  # the default
