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


@pytest.mark.parametrize("overrides", [{}, {"positions": "learned", "norm": "layer", "mlp": "gelu_tanh", "bias": True},
                                       {"n_kv_head": 2}])
def test_slot_cache_rows_of_their_own_lengths_equal_each_sequence_alone(overrides):
    # Continuous batching: rows of a slot cache continue sequences of different lengths in one call (a prompt read
    # in chunks, right-padded beside another's, decoding steps of rows at different positions, a slot moved).
    model = decoder("gpt", **overrides)
    seqs = [torch.randint(7, VOCAB, (n,), generator=torch.Generator().manual_seed(n)) for n in (9, 14, 5)]
    cache = model.new_slots(6)

    def run(slots, pieces):
        widths = [len(piece) for piece in pieces]
        idx = torch.zeros(len(slots), max(widths), dtype=torch.long)
        for row, piece in enumerate(pieces):
            idx[row, :len(piece)] = piece
        out = logits(model, idx, cache=cache.batch(slots, widths))
        cache.extend(slots, widths)
        return out

    first = run([2, 0], [seqs[0][:4], seqs[1][:12]])         # two prompts from empty slots, one padded
    second = run([2, 1], [seqs[0][4:8], seqs[2][:4]])        # a second chunk beside a new prompt
    steps = run([0, 1, 2], [seqs[1][12:13], seqs[2][4:5], seqs[0][8:9]])  # one token each, three lengths
    alone = [logits(model, seq[None])[0] for seq in seqs]
    assert torch.allclose(first[0, :4], alone[0][:4], atol=1e-10)
    assert torch.allclose(first[1, :12], alone[1][:12], atol=1e-10)
    assert torch.allclose(second[0, :4], alone[0][4:8], atol=1e-10)
    assert torch.allclose(second[1, :4], alone[2][:4], atol=1e-10)
    assert torch.allclose(steps[:, 0], torch.stack([alone[1][12], alone[2][4], alone[0][8]]), atol=1e-10)
    assert cache.lengths == [13, 5, 9, 0, 0, 0]
    cache.move(2, 3)  # a slot freed below: its last row moves down, keys and all
    assert cache.lengths == [13, 5, 0, 9, 0, 0]
    extra = torch.tensor([5])
    moved = run([3], [extra])
    assert torch.allclose(moved[0, 0], logits(model, torch.cat([seqs[0], extra])[None])[0, -1], atol=1e-10)
    # A stored prefix written into another slot continues as the original does.
    cache.write(2, 0, cache.read(3, 0, 8))
    again = run([2], [seqs[0][8:10]])
    assert torch.allclose(again[0], alone[0][8:10], atol=1e-10)
    # The buffers grow with the slots used: 4 of the 6 so far.
    assert cache.keys[0].shape == (4, model.config.kv_heads, model.config.block_size, 8)
    cache.write(5, 0, cache.read(0, 0, 13))
    assert cache.keys[0].shape[0] == 6  # doubled, up to the limit
    assert torch.allclose(run([5], [seqs[1][13:14]])[0, 0], alone[1][13], atol=1e-10)  # kept across the growth
    # The positive control: without its slot's keys, the step sees no context and gives other logits.
    assert (logits(model, seqs[0][8:9][None])[0, 0] - alone[0][8]).abs().max() > 1e-3


def test_slot_cache_buffers_grow_by_doubling_up_to_their_limits():
    from lmkit.models.layers import SlotCache

    cache = SlotCache(n_layer=1, slots=6, n_head=1, head_dim=2, max_len=1000)
    cache.lengths[5] = 0
    cache.move(5, 0)  # an empty slot past the buffers (taken, nothing written yet) moves down as well
    assert cache.keys[0].shape == (4, 1, 256, 2)
    cache.keys[0][3, 0, 255] = 7.0
    cache.reserve(5, 300)
    assert cache.keys[0].shape == (6, 1, 512, 2) and cache.keys[0][3, 0, 255, 0] == 7.0
    cache.reserve(1, 900)
    assert cache.keys[0].shape == (6, 1, 1000, 2) and cache.keys[0][3, 0, 255, 0] == 7.0
    cache.reserve(60, 5000)  # never past the limits
    assert cache.keys[0].shape == (6, 1, 1000, 2)
