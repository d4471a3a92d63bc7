"""Recomputed attention weights against a naive float64 reference and against the model's own output."""

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.data.framing import format_inputs
from lmkit.errors import UserError
from lmkit.interpret import attention
from lmkit.interpret.attention import attention_maps, attention_weights
from lmkit.models import build_model
from lmkit.tokenizer import Tokenizer
from lmkit.vocab import LMKIT
from tests.conftest import train_tiny
from tests.interop.conftest import write_finetuned
from tests.models.conftest import tiny_config
from tests.models.test_attention import reference_weights


def captured_inputs(model, idx, attention_mask=None):
    """Each block's attention input and output, captured independently of the code under test."""
    seen = []
    handles = [block.attn.register_forward_hook(lambda m, args, out: seen.append((args[0], out)))
               for block in model.blocks]
    with torch.no_grad():
        model.encode(idx) if attention_mask is None else model.encode(idx, attention_mask)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("arch,overrides", [("gpt", {}), ("gpt", {"qk_norm": True}), ("bert", {})],
                         ids=["gpt", "gpt-qk-norm", "bert"])
def test_weights_equal_a_naive_reference_and_reproduce_the_model_output(arch, overrides):
    torch.manual_seed(0)
    config = tiny_config(arch, **overrides)
    model = build_model(config).eval()
    for block in model.blocks:  # weights big enough that attention is far from uniform
        torch.nn.init.normal_(block.attn.qkv.weight, std=0.3)
    idx = torch.randint(7, config.vocab_size, (2, 12))
    weights = attention_weights(model, idx)  # (L, B, nh, T, T)
    assert weights.shape == (config.n_layer, 2, config.n_head, 12, 12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    upper = torch.ones(12, 12, dtype=torch.bool).triu(1)
    if arch == "gpt":
        assert weights[..., upper].abs().max() == 0  # causal: no query sees a later key
    else:
        assert weights[..., upper].min() > 0  # bidirectional
    assert weights.max() > 0.3  # not uniform: the comparison below can fail
    for layer, (block, (x, output)) in enumerate(zip(model.blocks, captured_inputs(model, idx))):
        expected = reference_weights(block.attn, x, arch == "gpt", config.norm_eps)
        torch.testing.assert_close(weights[layer].double(), expected, atol=1e-5, rtol=0)
        # The model's real attention output, rebuilt from these weights: out_proj(weights @ v).
        v = block.attn.qkv(x).split(config.d_model, dim=2)[2]
        v = v.view(2, 12, config.n_head, config.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        rebuilt = block.attn.out_proj((weights[layer] @ v).transpose(1, 2).reshape(2, 12, config.d_model))
        torch.testing.assert_close(rebuilt, output, atol=1e-5, rtol=1e-5)


def test_bert_padding_gets_no_weight_and_changes_nothing():
    torch.manual_seed(1)
    config = tiny_config("bert")
    model = build_model(config).eval()
    idx = torch.randint(7, config.vocab_size, (1, 10))
    padded = torch.cat([idx, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10, dtype=torch.bool), torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    alone = attention_weights(model, idx)
    with_padding = attention_weights(model, padded, mask)
    assert with_padding[..., 10:].abs().max() == 0
    torch.testing.assert_close(with_padding[..., :10, :10], alone, atol=1e-6, rtol=0)


def test_a_recomputation_that_disagrees_with_the_model_is_a_loud_bug(monkeypatch):
    torch.manual_seed(0)
    model = build_model(tiny_config("gpt")).eval()
    monkeypatch.setattr(attention, "apply_rotary", lambda x, cos, sin: x)  # forget the positions
    with pytest.raises(RuntimeError, match="differs from the model's own output"):
        attention_weights(model, torch.randint(7, 100, (1, 8)))


def test_checkpoints_gpt_classifier_and_lstm(dataset, tmp_path):
    source = train_tiny(dataset, tmp_path / "gpt").path
    checkpoint = read_checkpoint(source)
    maps = attention_maps(checkpoint, checkpoint.build_model().eval(), "The for statement")
    assert maps.causal and maps.weights.shape[:2] == (2, 2) and len(maps.tokens) == maps.weights.shape[-1]
    assert maps.tokens[0].startswith("\u2423")  # SentencePiece's word start, drawn visibly

    classifier = read_checkpoint(write_finetuned(source, tmp_path / "clf", labels=["a", "b"]))
    maps = attention_maps(classifier, classifier.build_model().eval(), "The for statement")
    tokens = Tokenizer.from_artifact(classifier.tokenizer_path).encode("The for statement")
    assert maps.ids == format_inputs([tokens], "gpt", 128, LMKIT)[0][0].tolist()  # read as the classifier reads it

    lstm = read_checkpoint(train_tiny(dataset, tmp_path / "lstm", model="lstm-small", d_model=32, n_layer=1).path)
    with pytest.raises(UserError, match=r"an LSTM \(arch lstm\) has no attention to show"):
        attention_maps(lstm, lstm.build_model().eval(), "text")


def test_bert_checkpoint_reads_cls_text_sep(dataset, tmp_path):
    checkpoint = read_checkpoint(train_tiny(dataset, tmp_path / "bert", model="bert-tiny").path)
    maps = attention_maps(checkpoint, checkpoint.build_model().eval(), "An object")
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]" and not maps.causal
    with pytest.raises(UserError, match="--text: gives no tokens"):
        attention_maps(checkpoint, checkpoint.build_model().eval(), "")
    with pytest.raises(UserError, match="more than the model's block size 128"):
        attention_maps(checkpoint, checkpoint.build_model().eval(), "word " * 200)
