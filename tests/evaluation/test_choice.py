"""Zero-shot multiple choice: encoding context and choice, hand-worked accuracies, and agreement with
an unbatched, direct computation."""

import json

import numpy as np
import pytest
import torch

from lmkit.errors import UserError
from lmkit.evaluation import choice
from lmkit.evaluation.choice import ChoiceItem, continuation_span, encode_pair, evaluate_choices, read_choice_file
from lmkit.evaluation.scoring import Inference, SpanScore
from lmkit.models import build_model
from lmkit.models.config import ModelConfig
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import EOS_ID


@pytest.fixture(scope="module")
def tokenizer(dataset):
    return Tokenizer.from_artifact(dataset / "tokenizer")


def test_encode_pair_splits_the_whole_text_and_moves_trailing_spaces(tokenizer):
    context, continuation = encode_pair(tokenizer, "The value is ", "returned")
    assert context + continuation == tokenizer.encode("The value is returned")
    assert context == tokenizer.encode("The value is")
    assert tokenizer.decode(continuation).strip() == "returned"
    empty_context, whole = encode_pair(tokenizer, "", "text")
    assert empty_context == [] and whole == tokenizer.encode("text")


def test_continuation_span_keeps_the_end_of_a_long_context():
    span = continuation_span(list(range(10, 30)), [40, 41], max_len=8, start=EOS_ID)
    assert span.tokens.tolist() == [*range(23, 30), 40, 41] and span.scored == 2  # 8 inputs + the last target
    assert continuation_span([10], [40], 8, EOS_ID).tokens.tolist() == [EOS_ID, 10, 40]
    with pytest.raises(UserError, match="exceeds the model's 4-token window"):
        continuation_span([], [1, 2, 3, 4, 5], max_len=4, start=EOS_ID)


def test_accuracy_and_length_normalized_accuracy_hand_worked(tokenizer, monkeypatch):
    # Item 1: choice 0 is likelier in total (-2 vs -4), but per character choice 1 wins (-4/8 > -2/1).
    # Item 2: choice 1 wins both ways.
    items = [ChoiceItem("a", "ctx", ["x", "yyyyyyyy"], 1), ChoiceItem("b", "ctx", ["zz", "w"], 1)]
    totals = iter([-2.0, -4.0, -6.0, -1.0])
    monkeypatch.setattr(choice, "score_spans", lambda inference, spans, advance=None: [
        SpanScore(np.array([next(totals)]), False) for _ in spans])
    metrics, predictions = evaluate_choices(Inference(None, torch.device("cpu"), "fp32", 1), tokenizer, items,
                                            max_len=64)
    assert metrics == {"accuracy": 0.5, "acc_norm": 1.0}
    assert [(p["predicted"], p["predicted_norm"]) for p in predictions] == [(0, 1), (1, 1)]
    assert predictions[0] == {"id": "a", "gold": 1, "predicted": 0, "predicted_norm": 1, "logprobs": [-2.0, -4.0]}


def test_choice_scores_equal_a_direct_forward_pass_per_choice(tokenizer):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2,
                                    d_model=32))
    items = [ChoiceItem("1", "The function returns", [" a value", " nothing at all", " x"], 0),
             ChoiceItem("2", "Classes", [" define objects", " q"], 1)]
    _, predictions = evaluate_choices(Inference(model, torch.device("cpu"), "fp32", 3), tokenizer, items, 64)
    for item, prediction in zip(items, predictions, strict=True):
        direct = []
        for option in item.choices:
            context = tokenizer.encode(item.context)
            whole = tokenizer.encode(item.context + option)
            sequence = torch.tensor([[EOS_ID, *whole]])
            with torch.no_grad():
                logits, _ = model(sequence[:, :-1])
            logprobs = torch.log_softmax(logits[0].double(), -1)
            direct.append(sum(logprobs[t, sequence[0, t + 1]].item() for t in range(len(context), len(whole))))
        assert prediction["logprobs"] == pytest.approx(direct, abs=1e-5)


@pytest.mark.parametrize("line,message", [
    ("not json", "not valid JSON"),
    ('["a"]', "expected an object"),
    ('{"context": 1, "choices": ["a", "b"], "answer": 0}', "'context' must be a string"),
    ('{"context": "c", "choices": ["a"], "answer": 0}', "'choices' must be a list of at least 2 non-empty strings"),
    ('{"context": "c", "choices": ["a", "b"]}', "no 'answer'"),
    ('{"context": "c", "choices": ["a", "b"], "answer": 2}',
     r"'answer' must be an index into choices \(0 to 1\), got 2"),
    ('{"context": "c", "choices": ["a", "b"], "answer": true}', "'answer' must be an index"),
])
def test_malformed_items_are_refused_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"context": "c", "choices": ["a", "b"], "answer": 1}) + "\n\n" + line + "\n")
    with pytest.raises(UserError, match=rf"{path}:3: {message}"):
        read_choice_file(str(path))


def test_read_choice_file_ids_and_limit(tmp_path):
    path = tmp_path / "items.jsonl"
    rows = [{"context": "c", "choices": ["a", "b"], "answer": 1, "id": "first"},
            {"context": "d", "choices": ["a", "b"], "answer": 0}, {"context": "e", "choices": ["a", "b"], "answer": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_choice_file(str(path), limit=2)
    assert [i.id for i in items] == ["first", f"{path}:2"] and items[0] == ChoiceItem("first", "c", ["a", "b"], 1)
