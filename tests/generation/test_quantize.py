"""int8 Linear layers against the float ones they replace."""

import pytest
import torch
from torch import nn

from lmkit.generation.quantize import Int8Linear, quantize_int8
from lmkit.models import build_model
from tests.models.conftest import tiny_config


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "weight-only"])
def test_int8_linear_is_close_to_the_float_layer(bias, dynamic):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias)
    quantized = Int8Linear(linear)
    quantized.dynamic = dynamic
    x = torch.randn(3, 5, 64)
    expected, got = linear(x), quantized(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    relative = (got - expected).norm() / expected.norm()
    assert 0 < relative < 0.02  # int8 rounding: visible, small
    assert quantized.weight_t.dtype == torch.int8 and quantized.weight_t.shape == (64, 48)


def test_weight_only_int8_equals_the_dequantized_float_layer():
    torch.manual_seed(1)
    linear = nn.Linear(32, 16, bias=False)
    quantized = Int8Linear(linear)
    quantized.dynamic = False
    dequantized = quantized.weight_t.t().float() * quantized.scale[:, None]  # (out, in)
    x = torch.randn(4, 32)
    assert torch.allclose(quantized(x), x @ dequantized.t(), atol=1e-5)
    # Per-output-channel scales: every row's largest weight maps to +-127.
    assert (quantized.weight_t.abs().amax(dim=0) == 127).all()


def test_quantize_replaces_every_linear_and_unties_the_head():
    model = build_model(tiny_config("gpt")).eval()
    x = torch.randint(7, 128, (2, 10))
    with torch.no_grad():
        expected = model(x)[0]
    quantized, total = quantize_int8(model)
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert isinstance(model.lm_head, Int8Linear) and isinstance(model.tok_emb, nn.Embedding)
    assert 0 < quantized <= total
    with torch.no_grad():
        got = model(x)[0]
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert not torch.equal(got, expected)
