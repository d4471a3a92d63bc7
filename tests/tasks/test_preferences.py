"""``evaluate --task preference``: its numbers equal log-probabilities computed apart (unpadded, one pair at a time,
in float64), alone and against a --reference (DPO's implicit reward), for text, sft and chat models; its metrics
gate with --fail-if; a bad reference, a flag it does not read and a pair longer than the context are refused."""

import json
import math

import pytest
import torch

from lmkit import artifacts, tasks
from lmkit.checkpoint import read_checkpoint
from lmkit.data.preferences import read_preferences
from lmkit.generation.prompts import PromptFormat
from lmkit.models import build_model
from lmkit.tokenizer import with_added_tokens
from tests.conftest import invoke_lmkit, paragraphs
from tests.evaluation.helpers import sft_checkpoint
from tests.generation.checkpoints import write_model


def write_pairs(path, n=12):
    records = [{"prompt": f"Say: {text[:20]}", "chosen": text.split()[0], "rejected": text.split()[-1] + " no"}
               for text in paragraphs(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@torch.no_grad()
def direct_logprobs(checkpoint_path, pairs_path):
    """(chosen, rejected) summed log-probabilities of each pair, each sequence alone and unpadded, in float64."""
    checkpoint = read_checkpoint(checkpoint_path)
    model, frame = checkpoint.inference_model(), PromptFormat(checkpoint)
    found = []
    for pair in read_preferences(pairs_path):
        scores = []
        for reply in (pair.chosen, pair.rejected):
            prompt, ids = frame.encode_exchange(pair.prompt, reply)
            logits, _ = model(torch.tensor([prompt + ids[:-1]]))
            logprobs = torch.log_softmax(logits[0].double(), dim=-1)
            scores.append(math.fsum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(ids)))
        found.append(scores)
    return found


def evaluate(*args):
    return invoke_lmkit("evaluate", *map(str, args), "--task", "preference", "--precision", "fp32", "--device", "cpu")


def report(out):
    return json.loads((out / "report.json").read_text())


def test_the_numbers_equal_a_direct_computation_alone_and_against_a_reference(gpt, bases, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    assert evaluate(gpt, pairs, "--out", tmp_path / "alone", "--batch-size", "5").returncode == 0
    metrics = report(tmp_path / "alone")["metrics"]
    direct = direct_logprobs(gpt, pairs)
    assert metrics["chosen_logp"] == pytest.approx(sum(c for c, _ in direct) / len(direct), abs=1e-6)
    assert metrics["rejected_logp"] == pytest.approx(sum(r for _, r in direct) / len(direct), abs=1e-6)
    assert metrics["reward_margin"] == pytest.approx(sum(c - r for c, r in direct) / len(direct), abs=1e-6)
    assert metrics["preference_accuracy"] == sum(c > r for c, r in direct) / len(direct)
    predictions = [json.loads(line) for line in (tmp_path / "alone" / "predictions.jsonl").read_text().splitlines()]
    assert [p["ranked_right"] for p in predictions] == [c > r for c, r in direct]

    reference = bases["gpt"]  # another tiny GPT over the same tokenizer
    result = evaluate(gpt, pairs, "--reference", reference, "--out", tmp_path / "reward")
    assert result.returncode == 0, result.stderr
    rewarded = report(tmp_path / "reward")
    ref = direct_logprobs(reference, pairs)
    rewards = [(c - rc, r - rr) for (c, r), (rc, rr) in zip(direct, ref, strict=True)]
    assert rewarded["metrics"]["preference_accuracy"] == sum(c > r for c, r in rewards) / len(rewards)
    assert rewarded["metrics"]["reward_margin"] == pytest.approx(sum(c - r for c, r in rewards) / len(rewards),
                                                                 abs=1e-6)
    assert rewarded["metrics"]["chosen_logp"] == pytest.approx(metrics["chosen_logp"], abs=1e-9)
    assert rewarded["method"]["reference"]["id"] == read_checkpoint(reference).artifact.id
    # the reference is part of the report's identity: another one makes another report
    assert read_checkpoint(reference).artifact.id in json.dumps(artifacts.load(tmp_path / "reward").manifest)


def test_sft_and_chat_models_offer_it_and_fail_if_gates_on_it(gpt, chat_model, tmp_path):
    sft = sft_checkpoint(gpt, tmp_path / "sft")
    for path in (gpt, sft, chat_model):
        assert tasks.for_checkpoint(read_checkpoint(path)).evaluation("preference") is not None
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    gated = evaluate(sft, pairs, "--fail-if", "preference_accuracy>=0")
    assert gated.returncode == 3, gated.stderr
    chat_pairs = tmp_path / "chat.jsonl"
    chat_pairs.write_text(json.dumps({"messages": [{"role": "user", "content": "My colour is red. Which colour?"}],
                                      "chosen": "red", "rejected": "blue"}) + "\n")
    assert evaluate(chat_model, chat_pairs, "--out", tmp_path / "chat").returncode == 0
    assert report(tmp_path / "chat")["metrics"]["chosen_logp"] == pytest.approx(
        direct_logprobs(chat_model, chat_pairs)[0][0], abs=1e-5)


def test_refusals_are_one_line_with_exit_code_1(gpt, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    base = read_checkpoint(gpt)
    grown = with_added_tokens(artifacts.load(base.tokenizer_path, kind="tokenizer"), ["<x>"], tmp_path / "tok")
    other = write_model(tmp_path / "other", build_model(base.model_config), base.model_config, "clm", grown.path)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 400, "chosen": "a", "rejected": "b"}) + "\n")
    frame = PromptFormat(base)
    prompt, chosen = frame.encode_exchange("word " * 400, "a")
    tokens = len(prompt) + max(len(chosen), len(frame.encode_exchange("word " * 400, "b")[1]))
    for args, message in (
            ((gpt, pairs, "--reference", other), f"--reference {other}: its tokenizer differs"),
            ((gpt, long), f"long.jsonl:1: {tokens} tokens (prompt and the longer reply), more than the model's "
                          "context (128 + 1) holds; shorten the pair"),
            ((gpt, tmp_path / "missing.jsonl"), "missing.jsonl: no such file")):
        result = evaluate(*args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1 and len(errors) == 1 and message in errors[0], result.stderr
    not_read = invoke_lmkit("evaluate", str(gpt), str(pairs), "--task", "choice", "--reference", str(gpt))
    assert not_read.returncode == 1 and "--reference: read by --task preference, not by --task choice" in \
        not_read.stderr
