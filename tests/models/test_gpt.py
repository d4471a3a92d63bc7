import math

import pytest
import torch

from lmkit.models import build_model, count_parameters, flops_per_token, model_config
from tests.models.conftest import VOCAB, tiny_config


def test_gpt_tiny_parameter_count_by_hand():
    model = build_model(model_config("gpt-tiny", vocab_size=1000))
    V, C, L, F = 1000, 64, 2, 192  # F: 8/3 * 64 = 170.7, rounded up to a multiple of 64
    attention = 3 * C * C + C * C  # qkv + output projection, no biases
    swiglu = 3 * C * F  # gate, up, down
    norms = 2 * C  # before attention and before the MLP
    expected = V * C + L * (attention + swiglu + norms) + C  # tied embedding, blocks, final norm
    assert expected == 170_816
    assert count_parameters(model) == expected
    assert count_parameters(model, non_embedding=True) == expected - V * C
    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == expected - (attention + swiglu + norms)


def test_qk_norm_adds_two_head_sized_norms_per_layer():
    plain = count_parameters(build_model(tiny_config("gpt")))
    normed = count_parameters(build_model(tiny_config("gpt", qk_norm=True)))
    assert normed - plain == 2 * 2 * (32 // 4)  # n_layer * (q, k) * head_dim


def test_flops_per_token_is_six_n_plus_attention():
    config = model_config("gpt-tiny", vocab_size=1000)
    n_non_embedding = 170_816 - 1000 * 64
    assert flops_per_token(config, 128) == 6 * n_non_embedding + 12 * 2 * 64 * 128
    assert flops_per_token(config, 256) > flops_per_token(config, 128) > 0
    big = model_config("gpt2-124m", vocab_size=50257)  # counted on the meta device: nothing allocated
    # GPT-2: per block 12 C^2 weights and 13 C biases and LayerNorm gains; a final LayerNorm (2 C).
    n = 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768
    assert flops_per_token(big, 1024) == 6 * n + 12 * 12 * 768 * 1024
    assert abs(flops_per_token(big, 1024) / (6 * 85e6) - 1) < 0.25  # ~6N for GPT-2 small's 85M


def test_flops_per_token_of_lstm_counts_every_parameter():
    config = tiny_config("lstm")
    assert flops_per_token(config, 16) == 6 * count_parameters(build_model(config))


def test_residual_projections_are_scaled_at_init():
    torch.manual_seed(0)
    n_layer = 8
    model = build_model(tiny_config("gpt", vocab_size=1000, d_model=256, n_head=4, n_layer=n_layer))
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    out_proj = torch.cat([b.attn.out_proj.weight.flatten() for b in model.blocks])  # 8 * 65536 samples
    down = torch.cat([b.mlp.down.weight.flatten() for b in model.blocks])
    qkv = torch.cat([b.attn.qkv.weight.flatten() for b in model.blocks])
    for weights, std in [(out_proj, residual_std), (down, residual_std), (qkv, 0.02), (model.tok_emb.weight, 0.02)]:
        assert abs(weights.std().item() / std - 1) < 0.02, (weights.std().item(), std)
        assert abs(weights.mean().item()) < std / 50
    assert all(torch.equal(b.attn_norm.weight, torch.ones(256)) for b in model.blocks)


def test_qk_norm_changes_the_output():
    torch.manual_seed(0)
    plain = build_model(tiny_config("gpt"))
    torch.manual_seed(0)
    normed = build_model(tiny_config("gpt", qk_norm=True))
    idx = torch.randint(7, VOCAB, (1, 12))
    assert not torch.allclose(plain(idx)[0], normed(idx)[0])


def test_gelu_mlp_variant():
    model = build_model(tiny_config("gpt", mlp="gelu"))
    assert model.blocks[0].mlp.up.weight.shape == (4 * 32, 32) and not hasattr(model.blocks[0].mlp, "gate")
    assert model(torch.randint(7, VOCAB, (1, 5)))[0].shape == (1, 5, VOCAB)


@pytest.mark.parametrize("positions", ["rope", "learned"])
@pytest.mark.parametrize("grad", [False, True], ids=["sdpa", "explicit"])
def test_packed_rows_give_each_sequence_its_states_alone(positions, grad):
    from lmkit.models.gpt import segment_positions

    torch.manual_seed(0)
    model = build_model(tiny_config("gpt", positions=positions)).eval()
    sequences = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16], [17]]
    idx = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 0, 0], [13, 14, 15, 16, 17, 0, 0, 0, 0, 0]])
    segments = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1, -1], [2, 2, 2, 2, 3, -1, -1, -1, -1, -1]])
    assert segment_positions(segments).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 1], [0, 1, 2, 3, 0, 0, 1, 2, 3, 4]]
    with torch.set_grad_enabled(grad):
        logits, _ = model(idx, segments=segments)
        alone = [model(torch.tensor([s]))[0][0] for s in sequences]
    spans = [(0, 0, 5), (0, 5, 8), (1, 0, 4), (1, 4, 5)]
    for (row, start, stop), expected in zip(spans, alone):
        assert torch.allclose(logits[row, start:stop], expected, atol=1e-5)
    with pytest.raises(ValueError, match="without an attention mask"):
        model.encode(idx, torch.ones_like(idx, dtype=torch.bool), segments=segments)
