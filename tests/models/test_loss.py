"""The fused linear cross entropy against F.cross_entropy over the full logits: the loss and every gradient,
with ignored targets, a bias, bf16 autocast, chunk boundaries, no gradient, and nothing to predict; and each
model's training forward (``return_logits=False``) against its logits path."""

import pytest
import torch
import torch.nn.functional as F

from lmkit.models import build_model
from lmkit.models import loss as loss_module
from lmkit.models.loss import linear_cross_entropy, token_loss
from lmkit.vocab import IGNORE_INDEX
from tests.models.conftest import tiny_config


def leaves(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator).requires_grad_() for shape in shapes]


def gradients(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("with_bias", [False, True])
def test_equals_cross_entropy_of_the_full_logits_in_float32(with_bias, monkeypatch):
    monkeypatch.setitem(loss_module._CHUNK_BYTES, "cpu", 4 * 50 * 7)  # 7 rows a chunk: a last chunk of 2
    hidden, weight, bias = leaves((3, 5, 16), (50, 16), (50,))
    targets = torch.randint(0, 50, (3, 5), generator=torch.Generator().manual_seed(1))
    targets[0, :2] = targets[2, 4] = IGNORE_INDEX
    bias = bias if with_bias else None
    inputs = [hidden, weight] + ([bias] if with_bias else [])
    reference = token_loss(F.linear(hidden, weight, bias), targets)
    fused = linear_cross_entropy(hidden, weight, bias, targets)
    assert fused.item() == pytest.approx(reference.item(), rel=1e-6)
    for ours, theirs in zip(gradients(3.0 * fused, inputs), gradients(3.0 * reference, inputs)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_under_bf16_autocast_matches_the_autocast_linear_layer():
    hidden, weight = leaves((64, 32), (300, 32), seed=2)
    targets = torch.randint(0, 300, (64,), generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = token_loss(F.linear(hidden, weight)[None], targets[None])
        fused = linear_cross_entropy(hidden, weight, None, targets)
    assert fused.dtype == torch.float32
    assert fused.item() == pytest.approx(reference.item(), rel=1e-3)
    ours, theirs = gradients(fused, [hidden, weight]), gradients(reference, [hidden, weight])
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)  # both matmuls in bf16


def test_without_gradients_gives_the_loss_alone(monkeypatch):
    hidden, weight = leaves((10, 8), (20, 8), seed=4)
    targets = torch.arange(10)
    # Validation runs under no_grad with trainable weights: no gradient may be computed on the way.
    monkeypatch.setattr(loss_module._LinearCrossEntropy, "apply", lambda *args: pytest.fail("computed gradients"))
    with torch.no_grad():
        fused = linear_cross_entropy(hidden, weight, None, targets)
    assert not fused.requires_grad
    assert fused.item() == pytest.approx(F.cross_entropy(hidden @ weight.T, targets).item(), rel=1e-6)


def test_nothing_to_predict_is_a_zero_loss_with_zero_gradients():
    hidden, weight = leaves((4, 8), (20, 8), seed=5)
    fused = linear_cross_entropy(hidden, weight, None, torch.full((4,), IGNORE_INDEX))
    assert fused.item() == 0.0
    grad_hidden, grad_weight = gradients(fused, [hidden, weight])
    assert not grad_hidden.any() and not grad_weight.any()


@pytest.mark.parametrize("arch, overrides", [("gpt", {}), ("gpt", {"norm": "layer", "positions": "learned",
                                                                     "bias": True, "mlp": "gelu_tanh"}),
                                             ("bert", {}), ("lstm", {})])
def test_a_models_training_loss_equals_its_logits_loss(arch, overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch, **overrides))
    idx = torch.randint(7, 128, (3, 20))
    targets = torch.randint(7, 128, (3, 20))
    targets[:, ::3] = IGNORE_INDEX  # masked LM predicts a few positions, SFT skips the prompt
    logits, reference = model(idx, targets)
    expected = {name: grad for name, grad in zip(dict(model.named_parameters()),
                                                 torch.autograd.grad(reference, list(model.parameters()),
                                                                     allow_unused=True))}
    none, fused = model(idx, targets, return_logits=False)
    assert none is None and logits.shape == (3, 20, 128)
    assert fused.item() == pytest.approx(reference.item(), rel=1e-5)
    got = torch.autograd.grad(fused, list(model.parameters()), allow_unused=True)
    for (name, want), have in zip(expected.items(), got):
        if want is None:
            assert have is None, name
        else:
            torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-6, msg=name)


def test_the_gradient_buffer_is_reused_across_steps_and_shapes_without_changing_results():
    hidden, weight = leaves((4, 6, 16), (50, 16), seed=2)
    small, _ = leaves((2, 3, 16), (1, 1), seed=3)
    targets = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(4))
    first = gradients(linear_cross_entropy(hidden, weight, None, targets), [hidden, weight])
    buffer = next(iter(loss_module._workspaces.values())).data_ptr()
    linear_cross_entropy(small, weight, None, targets[:2, :3]).backward()  # a smaller step uses the same buffer
    again = gradients(linear_cross_entropy(hidden, weight, None, targets), [hidden, weight])
    assert next(iter(loss_module._workspaces.values())).data_ptr() == buffer
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    reference = gradients(token_loss(F.linear(hidden, weight), targets), [hidden, weight])
    for ours, theirs in zip(again, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
