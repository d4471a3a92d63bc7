"""Loss, perplexity and bits per byte: the sliding window, batched scoring, and masked-LM evaluation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lmkit.data.packing import MaskingSettings
from lmkit.evaluation.language_modeling import (
    bits_per_byte,
    evaluate_causal,
    evaluate_masked,
    lm_metrics,
    masked_windows,
    rolling_spans,
    score_documents,
)
from lmkit.evaluation.scoring import Inference, Span, score_spans, token_logprobs
from lmkit.models import build_model
from lmkit.models.config import ModelConfig
from lmkit.vocab import EOS_ID


class UniformBytes(nn.Module):
    """A byte-level model that predicts every next byte with probability 1/256 (a causal model's encode and
    lm_head, which scoring reads)."""

    def encode(self, idx):
        return torch.zeros(*idx.shape, 1)

    def lm_head(self, hidden):
        return torch.zeros(*hidden.shape[:-1], 256)


def inference(model, batch_size=4):
    return Inference(model, torch.device("cpu"), "fp32", batch_size)


def tiny(arch="gpt", vocab=60, block=32, seed=0):
    torch.manual_seed(seed)
    heads = {} if arch == "lstm" else {"n_head": 2}
    return build_model(ModelConfig(arch=arch, vocab_size=vocab, block_size=block, n_layer=2, d_model=32, **heads))


def documents(seed=0, count=5, vocab=60, longest=90):
    rng = np.random.default_rng(seed)
    return [rng.integers(7, vocab, int(rng.integers(1, longest))) for _ in range(count)]


# -- bits per byte ---------------------------------------------------------------------------------
def test_bits_per_byte_of_uniform_byte_logits_is_exactly_8():
    targets = torch.tensor(list("any text, one byte per token".encode()))
    logprobs, _ = token_logprobs(torch.zeros(len(targets), 256), targets)
    assert bits_per_byte(-float(logprobs.sum()), len(targets)) == 8.0


def test_uniform_byte_model_scores_exactly_8_bits_per_byte_through_the_sliding_window():
    texts = ["The quick brown fox jumps over the lazy dog.", "héllo, wörld: two-byte characters", "x" * 300]
    byte_tokens = [list(text.encode("utf-8")) for text in texts]  # a byte-level tokenizer: one token per byte
    metrics, scores = evaluate_causal(inference(UniformBytes()), byte_tokens, [len(t) for t in byte_tokens],
                                      window=64, stride=16)
    assert metrics["bpb"] == 8.0
    assert metrics["loss"] == pytest.approx(math.log(256), rel=1e-15) and metrics["ppl"] == pytest.approx(256)
    assert [s.tokens for s in scores] == [len(t) for t in byte_tokens]


def test_lm_metrics_are_consistent():
    metrics = lm_metrics(nats=100.0, tokens=50, n_bytes=200)
    assert metrics == {"loss": 2.0, "ppl": pytest.approx(math.exp(2.0)), "bpb": pytest.approx(100 / math.log(2) / 200)}
    assert lm_metrics(1e6, 1, 1)["ppl"] == math.inf  # overflow is reported, not raised


# -- the sliding window ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,window,stride", [(1, 8, 8), (10, 4, 4), (10, 4, 1), (37, 8, 3), (8, 8, 2), (9, 8, 8)])
def test_every_token_is_scored_once_with_the_promised_context(n, window, stride):
    tokens = list(range(100, 100 + n))
    sequence = [EOS_ID, *tokens]
    scored_at = {}
    for span in rolling_spans(tokens, EOS_ID, window, stride):
        inputs = len(span.tokens) - 1
        assert inputs <= window
        start = next(s for s in range(len(sequence)) if sequence[s:s + len(span.tokens)] == list(span.tokens))
        for position in range(inputs - span.scored, inputs):
            target = start + position + 1  # index in sequence
            assert target not in scored_at
            scored_at[target] = position + 1  # tokens of context it was predicted from
    assert sorted(scored_at) == list(range(1, n + 1))
    for target, context in scored_at.items():
        assert context >= min(target, window - stride + 1) or context == target


@pytest.mark.parametrize("n,window", [(1, 4), (10, 4), (12, 4), (37, 8)])
def test_stride_equal_to_window_is_the_harness_rolling_method(n, window):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(100, 100 + n))
    expected = [make_disjoint_window(pair) for pair in get_rolling_token_windows(tokens, EOS_ID, window, 1)]
    ours = rolling_spans(tokens, EOS_ID, window, window)
    assert [(list(s.tokens[:-s.scored]), list(s.tokens[-s.scored:])) for s in ours] == expected


def test_window_covering_the_document_equals_one_direct_forward_pass():
    model = tiny(block=128)
    document = documents(seed=1, count=1, longest=100)[0]
    sequence = torch.tensor([[EOS_ID, *document]])
    with torch.no_grad():
        logits, _ = model(sequence[:, :-1])
    direct = torch.log_softmax(logits[0].double(), -1).gather(1, sequence[0, 1:, None]).sum().item()
    (windowed,) = score_documents(inference(model), [document], window=128, stride=64)
    assert windowed == pytest.approx(direct, rel=1e-12, abs=1e-9)
    # A shorter window loses context, so the score changes (the window is really applied).
    (short,) = score_documents(inference(model), [document], window=8, stride=8)
    assert short != pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("arch", ["gpt", "lstm"])
def test_batched_scoring_equals_one_span_at_a_time(arch):
    model = tiny(arch)
    spans = [span for doc in documents(seed=2, count=6) for span in rolling_spans(doc, EOS_ID, 16, 5)]
    alone = score_spans(inference(model, batch_size=1), spans)
    batched = score_spans(inference(model, batch_size=7), spans)
    for a, b in zip(alone, batched, strict=True):  # float32 matmuls of other shapes differ in the last bits, no more
        assert a.logprob == pytest.approx(b.logprob, rel=1e-6) and (a.tokens, a.greedy) == (b.tokens, b.greedy)


def test_span_scores_count_tokens_and_greedy():
    model = tiny()
    span = Span(np.array([EOS_ID, 10, 11, 12]), 2)
    (score,) = score_spans(inference(model), [span])
    with torch.no_grad():
        logits, _ = model(torch.tensor([[EOS_ID, 10, 11]]))
    logprobs = torch.log_softmax(logits[0].double(), -1)
    assert score.tokens == 2
    assert score.logprob == pytest.approx((logprobs[1, 11] + logprobs[2, 12]).item(), rel=1e-12)
    assert score.greedy == bool(logprobs[1].argmax() == 11 and logprobs[2].argmax() == 12)
    with pytest.raises(ValueError):
        Span(np.array([1, 2]), 2)  # nothing to condition on


def test_inference_counts_tokens_and_time():
    runner = inference(tiny())
    score_documents(runner, documents(seed=3, count=3), window=16, stride=16)
    assert runner.tokens > 0 and runner.seconds > 0 and runner.tokens_per_second > 0


def test_bf16_autocast_scores_close_to_fp32():
    model = tiny()
    docs = documents(seed=4, count=3)
    fp32 = score_documents(inference(model), docs, 16, 8)
    bf16 = score_documents(Inference(model, torch.device("cpu"), "bf16", 4), docs, 16, 8)
    assert bf16 == pytest.approx(fp32, rel=0.05)


# -- masked LM ---------------------------------------------------------------------------------------------
def test_masked_windows_frame_every_token():
    docs = [np.arange(10, 20), np.arange(30, 33)]
    windows = masked_windows(docs, 8)
    assert all(w[0] == 5 and w[-1] == 6 and len(w) <= 8 for w in windows)  # [CLS] ... [SEP]
    inner = np.concatenate([w[1:-1] for w in windows])
    assert inner.tolist() == [*range(10, 20), 6, *range(30, 33), 6]  # documents joined by [SEP], the tail kept


def test_masked_lm_is_seeded_and_independent_of_the_batch_size():
    model = tiny("bert")
    docs = documents(seed=5, count=6, longest=40)
    masking = MaskingSettings()
    first, masked = evaluate_masked(inference(model, 1), docs, 16, 60, masking, seed=3)
    again, masked_again = evaluate_masked(inference(model, 5), docs, 16, 60, masking, seed=3)
    assert masked == masked_again and first == pytest.approx(again, rel=1e-9)
    other, _ = evaluate_masked(inference(model, 5), docs, 16, 60, masking, seed=4)
    assert other["loss"] != pytest.approx(first["loss"], rel=1e-9)
    assert 0.0 <= first["mlm_accuracy"] <= 1.0 and first["ppl"] == pytest.approx(math.exp(first["loss"]))


def test_masked_lm_of_a_model_that_knows_the_answer():
    class Oracle(nn.Module):
        """Puts all mass on the token the test knows is at each position."""

        def forward(self, idx, targets=None, attention_mask=None):
            return torch.nn.functional.one_hot(self.truth[:, :idx.shape[1]], 60).float() * 50.0, None

    docs = [np.arange(10, 40)]
    (window,) = masked_windows(docs, 64)
    oracle = Oracle()
    oracle.truth = torch.as_tensor(window)[None]
    metrics, masked = evaluate_masked(inference(oracle), docs, 64, 60, MaskingSettings(), seed=0)
    assert masked >= 1 and metrics["mlm_accuracy"] == 1.0 and metrics["loss"] < 1e-15
