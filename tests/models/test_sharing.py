"""ALBERT's compression (Lan et al. 2020): cross-layer parameter sharing (--share-layers) and the factorized
embedding (--embedding-dim), in the decoder and both encoders."""

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.models import build_model, count_parameters, flops_per_token
from lmkit.models.layers import distinct_modules
from tests.models.conftest import VOCAB, tiny_config

FAMILIES = [("gpt", {}), ("bert", {}), ("bert", {"norm": "layer", "positions": "learned", "post_norm": True,
                                                 "bias": True, "type_vocab_size": 2})]  # lmkit's encoder, classic BERT


def block_parameters(model) -> int:
    return sum(p.numel() for p in model.blocks[0].parameters())


@pytest.mark.parametrize("arch,family", FAMILIES, ids=["gpt", "encoder", "classic-bert"])
def test_shared_layers_count_each_block_once_and_compute_as_copies(arch, family):
    torch.manual_seed(0)
    shared = build_model(tiny_config(arch, n_layer=4, share_layers=2, **family)).double()
    unshared = build_model(tiny_config(arch, n_layer=4, **family)).double()
    assert len(shared.blocks) == 4 and len(distinct_modules(shared.blocks)) == 2
    assert shared.blocks[0] is shared.blocks[1] and shared.blocks[2] is shared.blocks[3]  # consecutive groups
    assert count_parameters(unshared) - count_parameters(shared) == 2 * block_parameters(shared)
    # the same compute: FLOPs per token count a shared block once per layer that runs it
    assert flops_per_token(shared.config, 16) == flops_per_token(unshared.config, 16)
    # an unshared model whose blocks are copies of the shared ones computes the same logits
    weights = {name: tensor for name, tensor in shared.state_dict().items() if not name.startswith("blocks.")}
    unshared.load_state_dict(weights, strict=False)
    for layer in range(4):
        unshared.blocks[layer].load_state_dict(shared.blocks[layer].state_dict())
    idx = torch.randint(7, VOCAB, (3, 12))
    assert torch.equal(shared(idx)[0], unshared(idx)[0])
    # and a shared block's gradient is the sum of its copies' gradients
    shared(idx, idx)[1].backward()
    unshared(idx, idx)[1].backward()
    for name, parameter in shared.blocks[2].named_parameters():
        copies = unshared.blocks[2].get_parameter(name).grad + unshared.blocks[3].get_parameter(name).grad
        torch.testing.assert_close(parameter.grad, copies)


@pytest.mark.parametrize("arch,family", FAMILIES, ids=["gpt", "encoder", "classic-bert"])
def test_a_factorized_embedding_is_v_by_e_plus_e_by_d_and_the_head_is_tied_to_it(arch, family):
    config = tiny_config(arch, embedding_dim=8, **family)
    model = build_model(config)
    assert model.tok_emb.weight.shape == (VOCAB, 8)
    assert model.lm_head.weight is model.tok_emb.weight  # tied in the embedding width
    assert model.embeddings.proj.weight.shape == (config.d_model, 8)
    full = build_model(tiny_config(arch, **family))
    smaller = (VOCAB * (config.d_model - 8)  # the table
               - 8 * config.d_model - (config.d_model if config.bias else 0))  # the projection in
    if arch == "gpt":
        smaller -= 8 * config.d_model  # and out, before the tied head
    else:  # ALBERT's MLM head maps into the embedding width: dense d -> E, norm of E
        smaller += (config.d_model - 8) * (config.d_model + (1 if config.bias else 0)) \
            + (config.d_model - 8) * (2 if config.norm == "layer" else 1)
        if family.get("positions") == "learned":  # learned positions, token types and their norm live in E too
            smaller += (config.block_size + 2 + 2) * (config.d_model - 8)
    assert count_parameters(full) - count_parameters(model) == smaller
    idx = torch.randint(7, VOCAB, (2, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 10, VOCAB) and torch.isfinite(loss)
    assert model(idx, idx, return_logits=False)[1].item() == pytest.approx(loss.item(), rel=1e-5)  # fused path


@pytest.mark.parametrize("overrides,message", [
    ({"n_layer": 4, "share_layers": 3}, r"--share-layers: must be 0 \(none\) or divide --n-layer \(4\), got 3"),
    ({"share_layers": -1}, "--share-layers: must be 0"),
    ({"embedding_dim": -8}, "--embedding-dim: must be 0"),
])
def test_bad_sharing_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config("gpt", **overrides)
    with pytest.raises(ConfigError, match="has no effect on an LSTM"):
        tiny_config("lstm", share_layers=1)


def test_hooks_see_every_layer_of_a_shared_model_once():
    """What lmkit inspect reads (each layer's states, attention and neurons) walks layers, not distinct blocks."""
    from lmkit.interpret.activations import neuron_activations
    from lmkit.interpret.attention import attention_weights
    from lmkit.interpret.states import encode_layers

    torch.manual_seed(0)
    model = build_model(tiny_config("gpt", n_layer=4, share_layers=1)).eval()
    unshared = build_model(tiny_config("gpt", n_layer=4)).eval()
    unshared.load_state_dict({name: tensor for name, tensor in model.state_dict().items()
                              if not name.startswith("blocks.")}, strict=False)
    for layer in range(4):
        unshared.blocks[layer].load_state_dict(model.blocks[0].state_dict())
    idx = torch.randint(7, VOCAB, (1, 9))
    mask = torch.ones(1, 9, dtype=torch.bool)
    for ours, theirs in zip(encode_layers(model, idx, mask), encode_layers(unshared, idx, mask), strict=True):
        torch.testing.assert_close(ours, theirs)
    assert len(encode_layers(model, idx, mask)) == 5
    torch.testing.assert_close(attention_weights(model, idx), attention_weights(unshared, idx))
    assert attention_weights(model, idx).shape[0] == 4
    assert len(neuron_activations(model, idx[0].tolist())) == 4
