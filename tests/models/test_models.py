"""Behaviour every architecture shares: shapes, the loss, gradients, tying, the registry, saving."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model

from lmkit.models import BERT, CAUSAL_ARCHS, GPT, IGNORE_INDEX, MASKED_ARCHS, MODELS, LSTMLanguageModel, build_model
from lmkit.models.config import ARCHS
from lmkit.models.presets import model_config
from tests.models.conftest import VOCAB, tiny_config

MASK_ID = 4  # lmkit/tokenizer.py


def batch(arch: str, generator: torch.Generator, B: int = 4, T: int = 16):
    """Inputs and targets of the arch's objective: next token (causal) or masked tokens (15%, BERT)."""
    tokens = torch.randint(7, VOCAB, (B, T + 1), generator=generator)
    if arch in CAUSAL_ARCHS:
        return tokens[:, :-1], tokens[:, 1:]
    tokens = tokens[:, :-1]
    masked = torch.rand(B, T, generator=generator) < 0.15
    masked[:, 0] = True  # at least one target per row
    return tokens.masked_fill(masked, MASK_ID), tokens.masked_fill(~masked, IGNORE_INDEX)


def test_registry_covers_every_arch_once():
    assert MODELS == {"gpt": GPT, "bert": BERT, "lstm": LSTMLanguageModel}
    assert set(MODELS) == set(ARCHS)
    assert CAUSAL_ARCHS | MASKED_ARCHS == set(ARCHS) and not CAUSAL_ARCHS & MASKED_ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_initial_loss_near_uniform(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch))
    assert isinstance(model, MODELS[arch]) and model.config.arch == arch
    idx, targets = batch(arch, torch.Generator().manual_seed(1))
    logits, loss = model(idx, targets)
    assert logits.shape == (4, 16, VOCAB) and logits.dtype == torch.float32
    assert loss.shape == () and torch.isfinite(loss)
    # Small initial weights make near-uniform predictions: loss ~ ln(V)
    assert abs(loss.item() - math.log(VOCAB)) < 0.5, loss.item()
    logits_only, no_loss = model(idx)
    assert no_loss is None and torch.equal(logits_only, logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_ignored_targets_do_not_count(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch))
    generator = torch.Generator().manual_seed(2)
    idx = torch.randint(7, VOCAB, (3, 12), generator=generator)
    targets = torch.randint(7, VOCAB, (3, 12), generator=generator)
    ignored = torch.rand(3, 12, generator=generator) < 0.5
    logits, full_loss = model(idx, targets)
    _, loss = model(idx, targets.masked_fill(ignored, IGNORE_INDEX))
    kept = ~ignored
    log_probs = torch.log_softmax(logits[kept].double(), dim=-1)  # (N_kept, V)
    expected = -log_probs.gather(1, targets[kept].unsqueeze(1)).mean()
    assert torch.allclose(loss.double(), expected, atol=1e-6)
    assert not torch.allclose(loss, full_loss, atol=1e-4)  # the ignored positions really changed the mean


@pytest.mark.parametrize("arch", ARCHS)
def test_one_optimizer_step_reduces_the_loss(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch))
    idx, targets = batch(arch, torch.Generator().manual_seed(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, before = model(idx, targets)
    before.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    optimizer.step()
    with torch.no_grad():
        _, after = model(idx, targets)
    assert after.item() < before.item() - 0.01, (before.item(), after.item())


@pytest.mark.parametrize("arch", sorted(CAUSAL_ARCHS))
def test_causal_models_never_look_ahead(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch)).eval()
    idx = torch.randint(7, VOCAB, (2, 20), generator=torch.Generator().manual_seed(4))
    changed = idx.clone()
    changed[:, 11] = (idx[:, 11] + 1 - 7) % (VOCAB - 7) + 7
    with torch.no_grad():
        logits, _ = model(idx)
        logits_changed, _ = model(changed)
    assert torch.equal(logits[:, :11], logits_changed[:, :11])  # bit-identical before the change
    assert not torch.allclose(logits[:, 11:], logits_changed[:, 11:])  # and the change is seen after it


@pytest.mark.parametrize("arch", ARCHS)
def test_tied_embeddings_share_storage(arch):
    tied = build_model(tiny_config(arch))
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert tied.lm_head.weight.data_ptr() == tied.tok_emb.weight.data_ptr()
    untied = build_model(tiny_config(arch, tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.tok_emb.weight.data_ptr()
    V, C = VOCAB, untied.config.d_model
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == V * C


@pytest.mark.parametrize("arch", ARCHS)
def test_safetensors_round_trip_keeps_outputs(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch, tie_embeddings=arch != "bert"))
    assert not any("rope" in key for key in model.state_dict())  # derived tables are not saved
    save_model(model, str(tmp_path / "model.safetensors"))
    torch.manual_seed(1)
    restored = build_model(model.config)
    load_model(restored, str(tmp_path / "model.safetensors"))
    idx = torch.randint(7, VOCAB, (2, 10))
    assert torch.equal(model(idx)[0], restored(idx)[0])
    if model.config.tie_embeddings:
        assert restored.lm_head.weight.data_ptr() == restored.tok_emb.weight.data_ptr()


@pytest.mark.parametrize("arch", ARCHS)
def test_sequences_longer_than_block_size_are_refused(arch):
    model = build_model(tiny_config(arch, block_size=8))
    with pytest.raises(ValueError, match="sequence length 9 exceeds block_size 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("arch", ARCHS)
def test_dropout_is_active_in_training_only(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch, dropout=0.5))
    idx = torch.randint(7, VOCAB, (2, 10))
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_loss_is_float32_for_bfloat16_models():
    torch.manual_seed(0)
    model = build_model(tiny_config("gpt")).to(torch.bfloat16)
    idx = torch.randint(7, VOCAB, (2, 10))
    logits, loss = model(idx, idx)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.allclose(loss, F.cross_entropy(logits.float().flatten(0, 1), idx.flatten()))


@pytest.mark.parametrize("arch,overrides", [("bert", {}), ("gpt", {"qk_norm": True})], ids=["bert", "gpt-qk-norm"])
def test_bf16_autocast_takes_the_fused_rms_norm_without_warnings(arch, overrides):
    """A norm after a linear layer reads bf16 under autocast; its fp32 gain must not force torch's slow,
    warning path ("Mismatch dtype between input and weight")."""
    import warnings

    torch.manual_seed(0)
    model = build_model(model_config(f"{arch}-tiny", 64, **overrides))
    idx = torch.randint(7, 64, (2, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(idx, idx)
        loss.backward()
    assert not [w for w in caught if "dtype" in str(w.message).lower()], [str(w.message) for w in caught]


def test_rms_norm_equals_torch_in_fp32():
    from lmkit.models.layers import RMSNorm

    torch.manual_seed(0)
    ours, theirs = RMSNorm(16, eps=1e-6), torch.nn.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16)
    assert torch.equal(ours(x), theirs(x)) and ours.state_dict().keys() == theirs.state_dict().keys()


def test_chunks_cover_every_token_and_aggregate_per_text():
    import numpy as np

    from lmkit.data.framing import aggregate_logits, chunk_text, chunk_texts

    chunks = chunk_text(list(range(23)), room=10, stride=4)
    assert [c[0] for c in chunks] == [0, 4, 8, 12, 13] and chunks[-1][-1] == 22
    assert all(len(c) == 10 for c in chunks) and chunk_text([1, 2], 10, 4) == [[1, 2]]
    windows, owner = chunk_texts([list(range(100)), [7]], "bert", 12, "mean", 5, max_chunks=4)
    assert owner.tolist() == [0, 0, 0, 0, 1] and windows[0][0] == 0 and windows[3][-1] == 99  # first and last kept
    logits = torch.tensor([[1.0, 0.0], [3.0, -2.0], [5.0, 1.0]])
    assert aggregate_logits(logits, np.array([0, 0, 1]), 2, "mean").tolist() == [[2.0, -1.0], [5.0, 1.0]]
    assert aggregate_logits(logits, np.array([0, 0, 1]), 2, "max").tolist() == [[3.0, 0.0], [5.0, 1.0]]
