"""Preference tuning (DPO, ORPO): the losses against a computation of their own (per-sequence log-probabilities of
unpadded rows in float64, the formulas written out), a DPO run through the CLI that raises held-out preference
accuracy and keeps the base's kind, ORPO, LoRA, exact resume, and every bad input refused in one line before any
compute."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.config import resolve
from lmkit.errors import UserError
from lmkit.generation.prompts import PromptFormat
from lmkit.models import build_model
from lmkit.models.config import ModelConfig
from lmkit.stages import finetune
from lmkit.stages.finetune_config import FinetuneConfig
from lmkit.tokenizer import with_added_tokens
from lmkit.training.objectives.base import BatchLayout
from lmkit.training.objectives.preference import (
    PairExample,
    PreferenceTuning,
    dpo_losses,
    orpo_losses,
    pair_batch,
    reply_logprobs,
)
from tests.conftest import invoke_lmkit, paragraphs
from tests.evaluation.helpers import sft_checkpoint
from tests.generation.checkpoints import write_model

FAST = {"micro_batch": 8, "max_steps": 8, "eval_every": 4, "warmup_steps": 1, "lr": 3e-3, "precision": "fp32",
        "log_every": 1, "seq_len": 96, "val_fraction": 0.25}


def preference_records(n=64):
    """A learnable preference: every prompt asks for agreement; "yes." is chosen over "no."."""
    return [{"prompt": f"Agree with: {text[:24]}", "chosen": "yes.", "rejected": "no."} for text in paragraphs(n)]


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", preference_records())


@pytest.fixture(scope="module")
def sft_base(gpt, tmp_path_factory):
    return sft_checkpoint(gpt, tmp_path_factory.mktemp("sft") / "sft")


def config(base, data, out, **overrides):
    return resolve(FinetuneConfig, {}, {"base": str(base), "data": str(data), "out": str(out), **FAST, **overrides})


def logged(run_dir, key):
    return [(r["step"], r[key]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if key in r]


def evaluated(checkpoint, data, out):
    """``lmkit evaluate --task preference``'s metrics (each reply's log-probability alone, no reference)."""
    result = invoke_lmkit("evaluate", str(checkpoint), str(data), "--task", "preference", "--out", str(out),
                          "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    return json.loads((out / "report.json").read_text())["metrics"]


# -- the losses against a computation of their own -----------------------------------------------------------

@torch.no_grad()
def naive_reply_logprob(model, prompt, reply):
    """log p(reply | prompt): the unpadded sequence alone, one position at a time, in float64."""
    tokens = torch.tensor([prompt + reply])
    logits, _ = model(tokens[:, :-1])
    logprobs = torch.log_softmax(logits[0].double(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(reply))


@pytest.fixture(scope="module")
def tiny_pairs():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", vocab_size=40, block_size=32, n_layer=2, n_head=2, d_model=16,
                                    d_ff=32)).eval()
    lengths = [(3, 2, 5), (1, 4, 1), (6, 1, 3)]  # prompt, chosen, rejected: every padding case
    examples = [PairExample(*(torch.randint(4, 40, (n,)).tolist() for n in sizes), where=f"p{i}")
                for i, sizes in enumerate(lengths)]
    return model, examples


def test_dpo_loss_equals_the_formula_on_logprobs_computed_apart(tiny_pairs):
    model, examples = tiny_pairs
    batch = pair_batch(examples, pad=0, device=torch.device("cpu"))
    assert batch["idx"].shape == (6, 8) and batch["targets"].shape == (3,)  # 2B rows; one target per pair
    with torch.no_grad():
        logps, counts = reply_logprobs(model, batch)
    chosen = [naive_reply_logprob(model, e.prompt, e.chosen) for e in examples]
    rejected = [naive_reply_logprob(model, e.prompt, e.rejected) for e in examples]
    assert torch.allclose(logps.double(), torch.tensor(chosen + rejected, dtype=torch.float64), atol=1e-5)
    assert counts.tolist() == [2, 4, 1, 5, 1, 3]
    reference = torch.tensor([[-3.0, -4.0], [-7.5, -2.0], [-1.0, -6.0]])
    beta = 0.3
    expected = [-math.log(1 / (1 + math.exp(-beta * ((c - rc) - (r - rr)))))
                for c, r, (rc, rr) in zip(chosen, rejected, reference.tolist(), strict=True)]
    losses, _, _ = dpo_losses(logps, reference, beta)
    assert torch.allclose(losses.double(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    # the objective's loss is the mean over the pairs, with the reference it cached for their positions
    objective = PreferenceTuning(examples, [], BatchLayout(3, 1, 1), 0, torch.device("cpu"), 0, beta,
                                 {"train": reference, "validation": torch.zeros((0, 2))})
    batch = objective._batch(examples, [0, 1, 2], "train")
    with torch.no_grad():
        assert objective.loss(model, batch).item() == pytest.approx(sum(expected) / 3, abs=1e-5)


def test_orpo_loss_equals_the_formula(tiny_pairs):
    model, examples = tiny_pairs
    beta = 0.5
    with torch.no_grad():
        logps, counts = reply_logprobs(model, pair_batch(examples, 0, torch.device("cpu")))
    losses, chosen_reward, _ = orpo_losses(logps, counts, beta)
    for i, e in enumerate(examples):
        c = naive_reply_logprob(model, e.prompt, e.chosen) / len(e.chosen)  # length-normalized
        r = naive_reply_logprob(model, e.prompt, e.rejected) / len(e.rejected)
        log_odds = (c - math.log1p(-math.exp(c))) - (r - math.log1p(-math.exp(r)))
        expected = -c - beta * math.log(1 / (1 + math.exp(-log_odds)))
        assert losses[i].item() == pytest.approx(expected, abs=1e-5)
        assert chosen_reward[i].item() == pytest.approx(beta * c, abs=1e-6)


# -- runs ----------------------------------------------------------------------------------------------------

def test_dpo_through_the_cli_raises_held_out_preference_accuracy_and_keeps_the_sft_kind(sft_base, pairs_file,
                                                                                         tmp_path):
    out = tmp_path / "dpo"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**FAST, "max_steps": 12, "lr": 1e-2}.items()]
    result = invoke_lmkit("finetune", str(sft_base), str(pairs_file), "--out", str(out), *flags)
    assert result.returncode == 0, result.stderr
    accuracy = logged(out, "val_preference_accuracy")
    margins = logged(out, "val_reward_margin")
    assert accuracy[-1][1] == 1.0 and margins[-1][1] > margins[0][1] > 0  # --task auto chose dpo
    before, after = (evaluated(path, pairs_file, tmp_path / name) for path, name in ((sft_base, "before"),
                                                                                   (out / "final", "after")))
    assert before["preference_accuracy"] < 0.5 < after["preference_accuracy"] == 1.0
    assert logged(out, "reward_accuracy") and logged(out, "val_chosen_logp")
    checkpoint = read_checkpoint(out / "final")
    assert checkpoint.objective == "dpo" and checkpoint.task == "sft"
    assert checkpoint.template == read_checkpoint(sft_base).template
    manifest = checkpoint.artifact.manifest
    assert manifest["stats"]["task"] == "dpo"
    generated = invoke_lmkit("generate", str(out / "final"), "Agree with: the model", "--max-new-tokens",
                             "4", "--temperature", "0")
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr


def test_the_first_step_starts_at_log_2_against_its_own_base(sft_base, pairs_file, tmp_path):
    """The reference is the base: before any update policy and reference agree, so the DPO loss is log 2."""
    run = tmp_path / "run"
    finetune.run(config(sft_base, pairs_file, run, task="dpo", max_steps=1, eval_every=0))
    assert logged(run, "loss")[0][1] == pytest.approx(math.log(2), abs=1e-4)
    assert logged(run, "reward_margin")[0][1] == pytest.approx(0.0, abs=1e-4)


def test_orpo_runs_without_a_reference_and_learns_the_preference(gpt, pairs_file, tmp_path):
    run = tmp_path / "orpo"
    result = finetune.run(config(gpt, pairs_file, run, task="orpo", max_steps=12, beta=0.5))
    checkpoint = read_checkpoint(result.checkpoint.path)
    assert checkpoint.objective == "orpo" and checkpoint.task == "lm"  # a plain language model stays one
    losses = [loss for _, loss in logged(run, "loss")]
    assert losses[-1] < losses[0]
    assert logged(run, "val_preference_accuracy")[-1][1] == 1.0


def test_dpo_on_a_chat_model_keeps_its_template(chat_model, tmp_path):
    records = [{"messages": [{"role": "user", "content": f"My colour is {w}. Which colour?"}],
                "chosen": [{"role": "assistant", "content": w}], "rejected": [{"role": "assistant", "content": "no"}]}
               for w in ("red", "green", "blue", "amber", "violet", "black", "white", "grey") * 2]
    data = write_jsonl(tmp_path / "chat-pairs.jsonl", records)
    result = finetune.run(config(chat_model, data, tmp_path / "run", task="dpo", max_steps=2, micro_batch=4,
                                 eval_every=0, seq_len=128))
    checkpoint, base = read_checkpoint(result.checkpoint.path), read_checkpoint(chat_model)
    assert checkpoint.task == "chat" and checkpoint.chat.template == base.chat.template
    assert checkpoint.stop_ids == base.stop_ids


@pytest.mark.parametrize("overrides", [{}, {"lora_rank": 4, "lora_merge": False}], ids=["full", "lora"])
def test_resume_equals_uninterrupted(sft_base, pairs_file, tmp_path, overrides):
    settings = {"task": "dpo", "checkpoint_every": 4, "keep_last": 5, "final": "last", **overrides}
    full = finetune.run(config(sft_base, pairs_file, tmp_path / "full", **settings))
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copytree(tmp_path / "full" / "step-00000004", partial / "step-00000004")
    resumed = finetune.run(config(sft_base, pairs_file, partial, resume=True, **settings))
    resumed_weights = read_checkpoint(resumed.checkpoint.path).build_model().state_dict()
    for name, tensor in read_checkpoint(full.checkpoint.path).build_model().state_dict().items():
        assert torch.equal(tensor, resumed_weights[name]), name
    for key in ("loss", "reward_accuracy", "val_preference_accuracy"):
        assert [r for r in logged(tmp_path / "full", key) if r[0] > 4] == logged(partial, key), key


# -- refusals --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_references(gpt, tmp_path_factory):
    """Checkpoints DPO must refuse as a reference: another tokenizer, another vocabulary size."""
    root = tmp_path_factory.mktemp("refs")
    base = read_checkpoint(gpt)
    grown = with_added_tokens(artifacts.load(base.tokenizer_path, kind="tokenizer"), ["<x>"], root / "tokenizer")
    config = base.model_config
    wider = dataclasses.replace(config, vocab_size=config.vocab_size + 8)
    return {"tokenizer": write_model(root / "tok", build_model(config), config, "clm", grown.path),
            "vocabulary": write_model(root / "vocab", build_model(wider), wider, "clm", base.tokenizer_path)}


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "chosen": "a"}', 'pairs.jsonl:2: no "rejected" reply'),
    ('{"prompt": "p", "rejected": "a"}', 'pairs.jsonl:2: no "chosen" reply'),
    ('{"prompt": "p", "chosen": " ", "rejected": "a"}', 'pairs.jsonl:2: "chosen" is empty'),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}',
     'pairs.jsonl:2: "chosen" and "rejected" are the same reply'),
    ('{"prompt": "p", "chosen": "a", ', "pairs.jsonl:2: not valid JSON"),
    ('{"chosen": "a", "rejected": "b"}', "pairs.jsonl:2: no prompt"),
    ('{"prompt": "' + "word " * 80 + '", "chosen": "a", "rejected": "b"}',
     "more than the window (--seq-len 64) holds"),
])
def test_bad_pairs_are_refused_in_one_line_with_exit_code_1(gpt, tmp_path, line, message):
    data = write_jsonl(tmp_path / "pairs.jsonl", [preference_records(1)[0], line])
    result = invoke_lmkit("finetune", str(gpt), str(data), "--out", str(tmp_path / "run"), "--task", "dpo",
                          "--seq-len", "64", "--max-steps", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_references_and_options_are_refused_before_compute(gpt, pairs_file, other_references, tmp_path):
    env = finetune.distributed.setup()
    for which, message in (("tokenizer", "its tokenizer differs from "),
                           ("vocabulary", "its vocabulary has")):
        with pytest.raises(UserError, match=f"--reference {other_references[which]}: {message}"):
            finetune.run(config(gpt, pairs_file, tmp_path / which, task="dpo", reference=str(other_references[which])))
        assert not (tmp_path / which).exists()
    refusals = [({"task": "orpo", "reference": str(gpt)}, "--reference: read by --task dpo"),
                ({"task": "sft", "beta": 0.5}, "--beta: read by --task dpo or orpo, not by --task sft"),
                ({"task": "dpo", "metric": "accuracy"}, "--metric accuracy: --task dpo validates on loss or "
                                                       "preference_accuracy"),
                ({"task": "sft", "metric": "preference_accuracy"}, "--metric preference_accuracy: is a "
                                                                  "preference-tuning metric")]
    for values, message in refusals:
        with pytest.raises(UserError, match=message.replace("(", r"\(")):
            finetune.plan(config(gpt, pairs_file, tmp_path / "run", **values), env)
    with pytest.raises(UserError, match="--beta: must be positive"):
        config(gpt, pairs_file, tmp_path / "run", beta=0.0)


def test_a_chat_template_that_renders_the_prompt_by_its_reply_is_refused(chat_model, tmp_path):
    """A template whose rendering of the prompt depends on the reply (here its length, written first) gives the two
    replies of a pair different prompts: not a pair of replies to one prompt."""
    checkpoint = read_checkpoint(chat_model)
    chat = {**checkpoint.chat.to_dict(), "template": (
        "{{ messages[-1]['content'] | length }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
        "{% else %}{{ m['content'] }}<|im_end|>{% endif %}\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")}
    base = write_model(tmp_path / "base", checkpoint.build_model(), checkpoint.model_config, "chat",
                       checkpoint.tokenizer_path, {"chat": chat, "stop": list(checkpoint.stop_ids)})
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Which colour?", "chosen": "red", "rejected": "amber"}])
    result = invoke_lmkit("finetune", str(base), str(data), "--out", str(tmp_path / "run"), "--task", "dpo",
                          "--seq-len", "64", "--max-steps", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors == [f"error: {data}:1: the chat template renders the prompt differently before each reply"]
    assert not (tmp_path / "run").exists()


def test_preference_tuning_refuses_inputs_without_a_base(gpt, pairs_file, tmp_path):
    """The objective reads its pairs as the base frames them: built without one (not from `lmkit finetune BASE`,
    whose BASE is required), it is refused in one line, not an AttributeError."""
    planned = finetune.plan(config(gpt, pairs_file, tmp_path / "run", task="dpo"), finetune.distributed.setup())
    with pytest.raises(UserError, match=rf"^{pairs_file}: preference tuning starts from a checkpoint \(lmkit finetune "
                                        r"BASE \.\.\.\)$"):
        planned.spec.build(dataclasses.replace(planned.inputs, base=None))
    assert not (tmp_path / "run").exists()


def test_pairs_are_framed_as_generate_frames_them(sft_base):
    """The reply's ids follow the prompt's as the SFT template writes it, and end with </s>."""
    frame = PromptFormat(read_checkpoint(sft_base))
    prompt, reply = frame.encode_exchange("Agree with: x", "yes.")
    assert prompt == frame.encode_prompt("Agree with: x") and reply[-1] == frame.end_of_reply
