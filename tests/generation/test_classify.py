"""Label prediction on tiny classifier checkpoints (a BERT and a GPT body): the head's own probabilities
for inputs framed as in finetuning, in batches or alone."""

import pytest
import torch

from lmkit import tasks
from lmkit.checkpoint import read_checkpoint
from lmkit.data.framing import format_inputs
from lmkit.generation.classify import classify
from lmkit.generation.model import load_model
from lmkit.tokenizer import Tokenizer
from tests.generation import checkpoints

TEXTS = ["Return the sum of the values.", "A class that holds a list", "Module for regular expressions",
         "x", "The for statement is used to iterate over the elements of a sequence"]


@pytest.fixture(scope="module", params=["bert", "gpt"])
def classifier(request, tmp_path_factory):
    base = request.getfixturevalue(request.param)
    checkpoint = read_checkpoint(checkpoints.classifier(base, tmp_path_factory.mktemp("classifier") / "ckpt"))
    return checkpoint, load_model(checkpoint), Tokenizer.from_artifact(checkpoint.tokenizer_path)


def test_predictions_are_the_head_s_probabilities(classifier):
    checkpoint, model, tokenizer = classifier
    assert tasks.for_checkpoint(checkpoint).name == "classify"
    predictions = classify(model, tokenizer, checkpoint.labels, TEXTS, batch_size=2)
    idx, mask = format_inputs(tokenizer.encode_batch(TEXTS), checkpoint.model_config.arch,
                              checkpoint.model_config.block_size, tokenizer.specials)
    with torch.no_grad():
        expected = torch.softmax(model(idx, attention_mask=mask)[0], dim=-1)
    for prediction, row in zip(predictions, expected, strict=True):
        assert list(prediction.probabilities) == checkpoints.LABELS
        assert list(prediction.probabilities.values()) == pytest.approx(row.tolist(), abs=1e-5)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction.label == checkpoints.LABELS[int(row.argmax())]
    # Each text its own answer (a head that ignored the input would give one for all).
    assert len({tuple(p.probabilities.values()) for p in predictions}) == len(TEXTS)
    # Alone, each text gets the same answer as in its batch (padding does not leak in).
    alone = classify(model, tokenizer, checkpoint.labels, TEXTS[4:], batch_size=1)[0]
    assert alone.probabilities == pytest.approx(predictions[4].probabilities, abs=1e-5)


def test_a_text_longer_than_the_block_size_is_classified_from_its_beginning(classifier, capsys):
    checkpoint, model, tokenizer = classifier
    long_text = "word " * 400
    (prediction,) = classify(model, tokenizer, checkpoint.labels, [long_text], names=["in.jsonl line 7"],
                             head={**checkpoint.head, "long_text": "cut"})
    assert "in.jsonl line 7: longer than the model's window 128" in capsys.readouterr().err
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_a_long_text_is_the_aggregate_of_its_chunks_logits(classifier, capsys, how):
    checkpoint, model, tokenizer = classifier
    text = " ".join(f"{t} number {i}." for i in range(30) for t in TEXTS[:3])  # ~700 tokens, no two chunks alike
    tokens = tokenizer.encode(text)
    arch = checkpoint.model_config.arch
    room = 126 if arch == "bert" else 128
    stride = 50
    starts = list(range(0, len(tokens) - room, stride)) + [len(tokens) - room]
    chunks = [tokens[s:s + room] for s in starts]
    assert len(tokens) > 4 * room and len(chunks) == -(-(len(tokens) - room) // stride) + 1
    with torch.no_grad():
        framed = [format_inputs([chunk], arch, 128, tokenizer.specials) for chunk in chunks]
        logits = torch.cat([model(idx, attention_mask=mask)[0] for idx, mask in framed])
    expected = torch.softmax(logits.mean(0) if how == "mean" else logits.max(0).values, dim=-1)
    head = {**checkpoint.head, "max_len": 128, "long_text": how, "chunk_stride": stride}
    (prediction, short) = classify(model, tokenizer, checkpoint.labels, [text, TEXTS[0]], batch_size=3, head=head)
    assert list(prediction.probabilities.values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert capsys.readouterr().err == ""  # nothing was cut
    (alone,) = classify(model, tokenizer, checkpoint.labels, [TEXTS[0]], head=head)  # a short text: one chunk
    assert short.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
