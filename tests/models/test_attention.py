"""Our attention against a naive reference written here, and the relative-position property of RoPE."""

import math

import pytest
import torch

from lmkit.models import layers
from lmkit.models.layers import KeyPadding, SelfAttention, apply_rotary, causal_bias, explicit_attention, rope_tables
from tests.models.conftest import tiny_config

THETA = 10000.0


def reference_rotary(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex rotation: pair (x[i], x[i + D/2]) at position p is multiplied by e^(i p theta^(-2i/D))."""
    T, D = x.shape[-2], x.shape[-1]
    pair = torch.complex(x[..., : D // 2].double(), x[..., D // 2:].double())  # (..., T, D/2)
    angles = torch.tensor([[p * theta ** (-2 * i / D) for i in range(D // 2)] for p in range(T)],
                          dtype=torch.float64)  # (T, D/2)
    rotated = pair * torch.polar(torch.ones_like(angles), angles)
    return torch.cat((rotated.real, rotated.imag), dim=-1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


def reference_weights(attn: SelfAttention, x: torch.Tensor, causal: bool, eps: float,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask), head by head, in float64: (B, H, T, T)."""
    B, T, C = x.shape
    H, D = attn.n_head, C // attn.n_head
    qkv = x.double() @ attn.qkv.weight.double().T  # (B, T, 3C)
    q, k, _ = (part.reshape(B, T, H, D).transpose(1, 2) for part in qkv.split(C, dim=-1))  # (B, H, T, D)
    if attn.q_norm is not None:
        q, k = rms_norm(q, attn.q_norm.weight, eps), rms_norm(k, attn.k_norm.weight, eps)
    q, k = reference_rotary(q, THETA), reference_rotary(k, THETA)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, T)
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1)


def reference_attention(attn: SelfAttention, x: torch.Tensor, causal: bool, eps: float,
                        key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V, head by head, in float64."""
    B, T, C = x.shape
    v = (x.double() @ attn.qkv.weight.double().T)[..., 2 * C:]  # (B, T, C)
    v = v.reshape(B, T, attn.n_head, C // attn.n_head).transpose(1, 2)  # (B, H, T, D)
    y = reference_weights(attn, x, causal, eps, key_mask) @ v  # (B, H, T, D)
    return y.transpose(1, 2).reshape(B, T, C) @ attn.out_proj.weight.double().T  # (B, T, C)


def attention_module(causal: bool, qk_norm: bool) -> SelfAttention:
    torch.manual_seed(0)
    config = tiny_config("gpt", qk_norm=qk_norm)
    attn = SelfAttention(config, causal=causal).eval()
    with torch.no_grad():  # weights large enough that attention is far from uniform
        attn.qkv.weight.normal_(0.0, 0.3)
        attn.out_proj.weight.normal_(0.0, 0.3)
        if qk_norm:
            attn.q_norm.weight.uniform_(0.5, 2.0)
            attn.k_norm.weight.uniform_(0.5, 2.0)
    return attn


@pytest.mark.parametrize("qk_norm", [False, True])
def test_causal_attention_matches_naive_reference(qk_norm):
    attn = attention_module(causal=True, qk_norm=qk_norm)
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(1))
    cos, sin = rope_tables(attn.head_dim, 12, THETA)
    with torch.no_grad():
        ours = attn(x, cos, sin)
    expected = reference_attention(attn, x, causal=True, eps=attn.q_norm.eps if qk_norm else 0.0)
    assert (ours.double() - expected).abs().max() < 1e-5
    non_causal = reference_attention(attn, x, causal=False, eps=attn.q_norm.eps if qk_norm else 0.0)
    assert (ours.double() - non_causal).abs().max() > 1e-2  # the mask matters, so the check can fail


@pytest.mark.parametrize("qk_norm", [False, True])
def test_bidirectional_attention_with_padding_matches_naive_reference(qk_norm):
    attn = attention_module(causal=False, qk_norm=qk_norm)
    x = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(2))
    key_mask = torch.ones(2, 12, dtype=torch.bool)
    key_mask[1, 7:] = False
    cos, sin = rope_tables(attn.head_dim, 12, THETA)
    with torch.no_grad():
        ours = attn(x, cos, sin, KeyPadding(key_mask))
    expected = reference_attention(attn, x, causal=False, eps=attn.q_norm.eps if qk_norm else 0.0,
                                   key_mask=key_mask)
    assert (ours.double() - expected).abs().max() < 1e-5


def test_rope_scores_depend_only_on_relative_position():
    generator = torch.Generator().manual_seed(3)
    q, k = torch.randn(16, generator=generator), torch.randn(16, generator=generator)
    cos, sin = rope_tables(16, 128, THETA)

    def score(m: int, n: int) -> float:
        rotated_q = apply_rotary(q.view(1, 1, 1, 16), cos[m:m + 1], sin[m:m + 1])
        rotated_k = apply_rotary(k.view(1, 1, 1, 16), cos[n:n + 1], sin[n:n + 1])
        return (rotated_q * rotated_k).sum().item()

    for m, n in [(0, 0), (5, 2), (2, 5), (17, 3)]:
        for shift in (1, 10, 60):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert abs(score(5, 2) - score(5, 3)) > 1e-2  # while a different offset gives a different score
    assert score(0, 0) == pytest.approx((q * k).sum().item(), abs=1e-5)  # position 0 is no rotation


def test_rotation_keeps_vector_norms():
    x = torch.randn(1, 2, 50, 16)
    cos, sin = rope_tables(16, 50, THETA)
    assert torch.allclose(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_explicit_attention_equals_sdpa_causal(kv_heads):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 9, 8, generator=generator)
    k, v = (torch.randn(2, kv_heads, 9, 8, generator=generator) for _ in range(2))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv_heads != 4)
    torch.testing.assert_close(explicit_attention(q, k, v, causal_bias(9), 0.0), expected, rtol=1e-5, atol=1e-6)


def test_a_gpt_trains_on_explicit_attention_and_infers_with_sdpa_alike():
    from lmkit.models import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config("gpt", n_kv_head=2)).eval()
    idx = torch.randint(0, 128, (2, 16))
    calls = []
    real = layers.explicit_attention
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "explicit_attention", lambda *args: calls.append(1) or real(*args))
        training = model(idx)[0]  # grad enabled: the training path
        with torch.no_grad():
            inference = model(idx)[0]
    assert len(calls) == 2  # once per layer, for the training forward only
    torch.testing.assert_close(training, inference, rtol=1e-5, atol=1e-5)


def test_linear_and_ntk_rope_scaling():
    from lmkit.errors import ConfigError
    from lmkit.models.config import ModelConfig

    config = lambda scaling: ModelConfig(arch="gpt", vocab_size=64, block_size=64, n_layer=1, n_head=2,  # noqa: E731
                                         d_model=32, rope_scaling=scaling, rope_factor=4.0)
    cos, sin = rope_tables(16, 64, THETA)
    linear_cos, linear_sin = rope_tables(16, 64, THETA, config("linear"))
    # Position interpolation: position 4p turns through the angles of position p.
    assert torch.allclose(linear_cos[::4], cos[:16], atol=1e-5) and torch.allclose(linear_sin[::4], sin[:16], atol=1e-5)
    ntk = rope_tables(16, 64, THETA, config("ntk"))
    angle = lambda c, s: torch.atan2(s[1], c[1])  # noqa: E731  (position 1: the frequencies themselves)
    assert float(angle(*ntk)[0]) == pytest.approx(float(angle(cos, sin)[0]), rel=1e-5)  # the highest frequency kept
    assert float(angle(*ntk)[-1]) == pytest.approx(float(angle(cos, sin)[-1]) / 4, rel=1e-3)  # the lowest / 4
    with pytest.raises(ConfigError, match="--rope-factor: linear scaling stretches the context"):
        ModelConfig(arch="gpt", vocab_size=64, block_size=64, n_layer=1, n_head=2, d_model=32, rope_scaling="linear",
                    rope_factor=0.5)
