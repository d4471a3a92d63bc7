"""The lm-evaluation-harness adapter runs local tasks offline, and agrees with lmkit's own evaluation."""

import os

import numpy as np
import pytest
import torch

from lmkit.errors import UserError
from lmkit.evaluation import harness
from lmkit.evaluation.choice import ChoiceItem, evaluate_choices
from lmkit.evaluation.language_modeling import evaluate_causal
from lmkit.evaluation.scoring import Inference
from lmkit.models import build_model
from lmkit.models.config import ModelConfig
from lmkit.tokenizer import Tokenizer
from tests.evaluation.helpers import CHOICE_ITEMS, ROLLING_TEXTS, write_tasks

pytest.importorskip("lm_eval")  # the optional extra lmkit[harness]; `make setup` installs it

@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def model_and_tokenizer(dataset):
    tokenizer = Tokenizer.from_artifact(dataset / "tokenizer")
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2,
                                    d_model=32))
    return Inference(model, torch.device("cpu"), "fp32", 8), tokenizer


def test_local_tasks_run_through_the_adapter_and_agree_with_lmkit(tmp_path, offline_cache, model_and_tokenizer):
    inference, tokenizer = model_and_tokenizer
    tasks = write_tasks(tmp_path / "tasks")
    manager = harness.task_manager(str(tasks))
    harness.check_tasks(manager, ["tiny_choice", "tiny_rolling"], str(tasks))
    lm = harness.make_lm(inference, tokenizer, window=32, stride=32, generate=None)
    result = harness.run_tasks(lm, manager, ["tiny_choice", "tiny_rolling"], limit=0, seed=0)
    metrics = result["metrics"]
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"
    # Multiple choice: the harness asks for (question, " " + option); the same items through lmkit's task.
    items = [ChoiceItem(str(i), item["question"], [" " + o for o in item["options"]], item["label"])
             for i, item in enumerate(CHOICE_ITEMS)]
    ours, _ = evaluate_choices(inference, tokenizer, items, 32)
    assert metrics["tiny_choice/acc"] == pytest.approx(ours["accuracy"])
    assert 0.0 <= metrics["tiny_choice/acc_norm"] <= 1.0
    # Rolling log-likelihood: the harness's bits per byte is lmkit's, by the same sliding-window code.
    tokens = [np.asarray(tokenizer.encode(text)) for text in ROLLING_TEXTS]
    lm_metrics, _ = evaluate_causal(inference, tokens, [len(t.encode()) for t in ROLLING_TEXTS], 32, 32)
    assert metrics["tiny_rolling/bits_per_byte"] == pytest.approx(lm_metrics["bpb"], rel=1e-9)
    assert metrics["tiny_rolling/word_perplexity"] > 1
    assert "tiny_choice" in result["results"] and "tiny_choice/acc_stderr" not in metrics


def test_unknown_task_and_missing_directory_are_refused(tmp_path, offline_cache):
    tasks = write_tasks(tmp_path / "tasks")
    manager = harness.task_manager(str(tasks))
    with pytest.raises(UserError, match=r"--harness-tasks: no task 'nope' in .*; known: tiny_choice, tiny_rolling"):
        harness.check_tasks(manager, ["tiny_choice", "nope"], str(tasks))
    with pytest.raises(UserError, match="--harness-include .*missing: not a directory of task files"):
        harness.task_manager(str(tmp_path / "missing"))


def test_generation_requests_without_a_generator_are_refused(model_and_tokenizer):
    inference, tokenizer = model_and_tokenizer
    lm = harness.make_lm(inference, tokenizer, 32, 32, generate=None)

    class Request:
        args = ("Q: 1+1?\nA:", {"until": ["\n"]})

    with pytest.raises(UserError, match="a generation task needs lmkit.generation"):
        lm.generate_until([Request()])
    answers = harness.make_lm(inference, tokenizer, 32, 32, lambda prompts, n, stop: [f"{n} {stop}"] * len(prompts))
    assert answers.generate_until([Request()]) == ["256 ['\\n']"]


def test_loglikelihood_requests_score_the_continuation(model_and_tokenizer):
    inference, tokenizer = model_and_tokenizer
    lm = harness.make_lm(inference, tokenizer, 32, 32, generate=None)

    class Request:
        def __init__(self, *args):
            self.args = args

    (logprob, greedy), (empty, empty_greedy) = lm.loglikelihood([Request("The value", " returned"), Request("x", "")])
    items = [ChoiceItem("0", "The value", [" returned", " other"], 0)]
    _, (prediction,) = evaluate_choices(inference, tokenizer, items, 32)
    assert logprob == pytest.approx(prediction["logprobs"][0], abs=1e-6) and isinstance(greedy, bool)
    assert (empty, empty_greedy) == (0.0, True)


def test_flatten_results_keeps_numbers_and_names_filters():
    flat = harness.flatten_results({"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": "N/A",
                                          "exact_match,strict-match": 1.0, "sample_len": 3}})
    assert flat == {"t/acc": 0.5, "t/exact_match/strict-match": 1.0}


def test_continuations_follow_the_tokenizers_start_token(model_and_tokenizer):
    """The harness scores a continuation after the model's own start token (an imported Llama's <s>), as
    lmkit's choice task does; it used to put lmkit's </s> before every context."""
    import dataclasses

    from lmkit.evaluation.choice import continuation_span, encode_pair
    from lmkit.evaluation.scoring import score_spans
    from lmkit.vocab import BOS_ID, EOS_ID, LMKIT

    inference, tokenizer = model_and_tokenizer

    class Request:
        args = ("The for statement", " is used")

    found = []
    for start in (EOS_ID, BOS_ID):
        scoring = dataclasses.replace(inference, specials=dataclasses.replace(LMKIT, start=start))
        ((logprob, _),) = harness.make_lm(scoring, tokenizer, window=32, stride=32, generate=None) \
            .loglikelihood([Request()])
        span = continuation_span(*encode_pair(tokenizer, *Request.args), 32, start)
        assert span.tokens[0] == start
        assert logprob == pytest.approx(score_spans(scoring, [span])[0].logprob, rel=1e-12)
        found.append(logprob)
    assert found[0] != found[1]
