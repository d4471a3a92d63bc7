"""The decoders' generation paths against their plain forward pass: the KV cache (GPT), the carried state
(LSTM), and left padding with an attention mask, in float64 so that any difference is a bug, not rounding."""

import pytest
import torch

from lmkit.models import build_model
from lmkit.models.layers import KVCache, attention_mask_4d
from tests.models.conftest import VOCAB, tiny_config


def decoder(arch: str, **overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch, **overrides)).double().eval()
    with torch.no_grad():  # weights large enough that positions and masks visibly change the outputs
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0.0, 0.3)
    return model


def logits(model, idx, **kwargs):
    return model.lm_head(model.encode(idx, **kwargs))


ARCHS = [("gpt", {}), ("gpt", {"qk_norm": True}), ("lstm", {})]


@pytest.mark.parametrize("arch,overrides", ARCHS)
def test_cached_chunks_equal_one_full_pass(arch, overrides):
    model = decoder(arch, **overrides)
    idx = torch.randint(7, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    full = logits(model, idx)
    cache = model.new_cache(2, 12)
    pieces = [logits(model, idx[:, a:b], cache=cache) for a, b in ((0, 5), (5, 8), (8, 9), (9, 10), (10, 12))]
    assert cache.length == 12
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-10)
    # The cache matters: the same last token without it sees no context and gives other logits.
    assert (logits(model, idx[:, -1:]) - full[:, -1:]).abs().max() > 1e-3


@pytest.mark.parametrize("arch,overrides", ARCHS)
def test_left_padded_rows_equal_each_row_alone(arch, overrides):
    model = decoder(arch, **overrides)
    rows = [torch.randint(7, VOCAB, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 9, 6)]
    width = 9
    idx = torch.zeros(3, width, dtype=torch.long)  # pad id 0 on the left
    mask = torch.zeros(3, width, dtype=torch.bool)
    for i, row in enumerate(rows):
        idx[i, width - len(row):], mask[i, width - len(row):] = row, True
    uncached = logits(model, idx, attention_mask=mask)
    cache = model.new_cache(3, width + 2)
    prefill = logits(model, idx, attention_mask=mask, cache=cache)
    extra = torch.randint(7, VOCAB, (3, 2), generator=torch.Generator().manual_seed(5))
    steps = [logits(model, extra[:, k:k + 1], attention_mask=torch.cat([mask, torch.ones(3, k + 1, dtype=torch.bool)],
                                                                         dim=1), cache=cache) for k in range(2)]
    for i, row in enumerate(rows):
        alone = logits(model, torch.cat([row, extra[i]])[None])[0]  # (len + 2, V)
        real = slice(width - len(row), width)
        assert torch.allclose(uncached[i, real], alone[:len(row)], atol=1e-10)
        assert torch.allclose(prefill[i, real], alone[:len(row)], atol=1e-10)
        assert torch.allclose(torch.cat([s[i] for s in steps]), alone[len(row):], atol=1e-10)
    # Without the mask, the padding changes the short rows: the test can fail.
    assert (logits(model, idx)[0, -1] - uncached[0, -1]).abs().max() > 1e-3


def test_gpt_cache_keeps_rotated_keys_in_preallocated_buffers():
    model = decoder("gpt")
    cache = model.new_cache(1, 6)
    assert isinstance(cache, KVCache) and cache.layers[0].keys.shape == (1, 4, 6, 8)
    logits(model, torch.randint(7, VOCAB, (1, 6)), cache=cache)
    with pytest.raises(ValueError, match="KV cache overflow"):
        logits(model, torch.randint(7, VOCAB, (1, 1)), cache=cache)


def test_dropping_rows_from_the_cache_keeps_the_others():
    model = decoder("gpt")
    idx = torch.randint(7, VOCAB, (3, 5), generator=torch.Generator().manual_seed(2))
    cache = model.new_cache(3, 6)
    logits(model, idx, cache=cache)
    cache.select(torch.tensor([0, 2]))
    nxt = torch.randint(7, VOCAB, (2, 1), generator=torch.Generator().manual_seed(3))
    stepped = logits(model, nxt, cache=cache)
    full = logits(model, torch.cat([idx[[0, 2]], nxt], dim=1))
    assert torch.allclose(stepped[:, 0], full[:, -1], atol=1e-10)


def test_positions_beyond_the_block_size_are_refused():
    model = decoder("gpt")  # block_size 32
    with pytest.raises(ValueError, match="exceeds block_size"):
        model.encode(torch.zeros(1, 33, dtype=torch.long))
    mask = torch.zeros(1, 40, dtype=torch.bool)
    mask[0, 10:] = True  # 30 real tokens after 10 pads: within the block size
    assert model.encode(torch.zeros(1, 40, dtype=torch.long), attention_mask=mask).shape == (1, 40, 32)


def test_padding_queries_attend_to_themselves_only():
    key_mask = torch.tensor([[False, False, True, True]])
    mask = attention_mask_4d(key_mask, 4, causal=True)[0, 0]
    assert mask.tolist() == [[True, False, False, False], [False, True, False, False],
                             [False, False, True, False], [False, False, True, True]]
    # The encoder keeps its plain key mask: every query sees the real keys.
    assert attention_mask_4d(key_mask, 4, causal=False).shape == (1, 1, 1, 4)
