import numpy as np
import pytest
import torch

from lmkit import artifacts
from lmkit.data.packing import (
    CausalWindows,
    MaskedWindows,
    MaskingSettings,
    TokenStream,
    load_stream,
    mask_tokens,
    read_stream,
    sample_indices,
)
from lmkit.data.shards import read_shard
from lmkit.vocab import CLS_ID, EOS_ID, FIRST_TEXT_ID, IGNORE_INDEX, MASK_ID, SEP_ID
from tests.conftest import invoke_lmkit


def test_stream_puts_a_separator_after_each_document(dataset):
    art = artifacts.load(dataset)
    stream = load_stream(art, "train")
    docs = [tokens for shard in art.stats["splits"]["train"]["shards"]
            for tokens in read_shard(art.path / shard["file"]).column("tokens").to_pylist()]
    expected = [t for doc in docs for t in doc + [EOS_ID]]
    assert len(stream) == len(expected)
    assert stream.gather(np.arange(len(stream))).tolist() == expected
    assert stream.documents == len(docs)
    assert stream.text_bytes == art.stats["splits"]["train"]["bytes"]


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory, text_corpus):
    """The test corpus in shards of about 2 KB: many files, each with several record batches."""
    out = tmp_path_factory.mktemp("shards") / "data"
    invoke_lmkit("preprocess", str(text_corpus), "--out", str(out), "--vocab-size", "400", "--workers", "1",
                 "--shard-size", "2KB", check=True)
    return artifacts.load(out)


def test_lazy_stream_reads_what_the_stream_in_ram_holds(many_shards):
    assert len(many_shards.stats["splits"]["train"]["shards"]) > 3
    lazy, in_ram = load_stream(many_shards, "train"), read_stream(many_shards, "train")
    docs = [tokens for shard in many_shards.stats["splits"]["train"]["shards"]
            for tokens in read_shard(many_shards.path / shard["file"]).column("tokens").to_pylist()]
    assert in_ram.tokens.tolist() == [t for doc in docs for t in doc + [EOS_ID]]
    positions = np.random.default_rng(0).integers(0, len(lazy), size=(64, 33))
    assert np.array_equal(lazy.gather(positions), in_ram.tokens[positions])
    assert (lazy.documents, lazy.text_bytes) == (in_ram.documents, in_ram.text_bytes)
    for seq_len in (7, 64):  # windows, causal and masked, equal whichever stream they read
        lazy_windows, ram_windows = CausalWindows(lazy, seq_len), CausalWindows(in_ram, seq_len)
        indices = lazy_windows.sample(3, 0, lazy_windows.count)
        assert all(torch.equal(a, b)
                   for a, b in zip(lazy_windows.batch(indices), ram_windows.batch(indices)))
        masked = [MaskedWindows(s, seq_len, 400, MaskingSettings()) for s in (lazy, in_ram)]
        indices = masked[0].sample(3, 0, masked[0].count)
        first, second = (w.batch(indices, torch.Generator().manual_seed(1)) for w in masked)
        assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(IndexError):
        lazy.gather(np.array([len(lazy)]))


def test_lazy_stream_concatenates_datasets(many_shards, dataset):
    other = artifacts.load(dataset)
    both = load_stream([many_shards, other], "validation")
    first, second = read_stream(many_shards, "validation"), read_stream(other, "validation")
    assert both.gather(np.arange(len(both))).tolist() == first.tokens.tolist() + second.tokens.tolist()
    assert both.documents == first.documents + second.documents


def test_causal_windows_overlap_by_one_and_shift_targets():
    stream = TokenStream(np.arange(100, dtype=np.int32), 1, 100)
    windows = CausalWindows(stream, seq_len=10)
    assert windows.count == 9
    x, y = windows.batch(np.array([0, 3]))
    assert x[0].tolist() == list(range(10)) and y[0].tolist() == list(range(1, 11))
    assert x[1].tolist() == list(range(30, 40)) and y[1, -1].item() == 40


def test_masking_statistics():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(FIRST_TEXT_ID, 1000, (200, 256))
    tokens[:, 0], tokens[:, -1] = CLS_ID, SEP_ID
    inputs, targets = mask_tokens(tokens, 1000, MaskingSettings(), generator)
    chosen = targets != IGNORE_INDEX
    assert abs(chosen.float().mean().item() - 0.15 * 254 / 256) < 0.005
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # specials are never chosen
    assert torch.equal(targets[chosen], tokens[chosen])
    masked = (inputs == MASK_ID) & chosen
    kept = (inputs == tokens) & chosen
    randomized = chosen & ~masked & ~kept
    n = chosen.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.02
    assert abs(kept.sum().item() / n - 0.1) < 0.02  # (random can also hit the same token: rare)
    assert abs(randomized.sum().item() / n - 0.1) < 0.02
    assert torch.equal(inputs[~chosen], tokens[~chosen])


def test_masked_windows_are_framed():
    stream = TokenStream(np.arange(FIRST_TEXT_ID, FIRST_TEXT_ID + 100, dtype=np.int32), 1, 100)
    windows = MaskedWindows(stream, 12, 200, MaskingSettings(probability=0.0))
    x, y = windows.batch(np.array([1]), torch.Generator().manual_seed(0))
    assert x[0, 0].item() == CLS_ID and x[0, -1].item() == SEP_ID
    body = list(range(FIRST_TEXT_ID + 10, FIRST_TEXT_ID + 20))
    assert sum(a != b for a, b in zip(x[0, 1:-1].tolist(), body)) <= 1
    # even at probability 0 one position per row is chosen, so the loss is never empty (NaN)
    assert (y != IGNORE_INDEX).sum().item() == 1 and y[y != IGNORE_INDEX].item() in body


def test_sample_indices_are_epoch_permutations_and_pure():
    first = sample_indices(50, seed=3, start=0, length=50)
    assert sorted(first.tolist()) == list(range(50))
    second = sample_indices(50, seed=3, start=50, length=50)
    assert sorted(second.tolist()) == list(range(50)) and second.tolist() != first.tolist()
    assert sample_indices(50, seed=3, start=45, length=10).tolist() == first[45:].tolist() + second[:5].tolist()
    assert sample_indices(50, seed=4, start=0, length=50).tolist() != first.tolist()


def test_length_grouped_order_pads_less_reads_every_example_and_is_pure():
    from lmkit.data.packing import LengthGroupedOrder, sample_indices

    lengths = np.random.default_rng(0).integers(5, 128, 1000)
    order = LengthGroupedOrder(lengths, seed=3, group=8)
    read = order.indices(0, 3 * 50 * 8 * 2)  # six buckets of 50 steps of 8: 2.4 epochs
    # The same examples as the unsorted order, bucket by bucket: only their order within a bucket changes.
    plain = sample_indices(1000, 3, 0, len(read))
    for begin in range(0, len(read), 400):
        assert sorted(read[begin:begin + 400]) == sorted(plain[begin:begin + 400])

    def padding(indices):  # padded positions per real one, over steps of 8
        steps = lengths[indices].reshape(-1, 8)
        return (steps.max(axis=1) * 8 - steps.sum(axis=1)).sum() / steps.sum()

    assert padding(read) < 0.05 < 0.5 < padding(plain)
    assert not np.all(np.diff(lengths[read[:400]]) >= 0)  # the steps are shuffled, not read short to long
    # Pure: any position range, read afresh (a resumed run), gives what the run read.
    again = LengthGroupedOrder(lengths, seed=3, group=8)
    for start, count in ((0, 4), (396, 8), (404, 2), (2000, 16), (2396, 4)):
        assert np.array_equal(again.indices(start, count), read[start:start + count])
    assert not np.array_equal(LengthGroupedOrder(lengths, seed=4, group=8).indices(0, 400), read[:400])


def test_bucketed_padding_stops_at_the_window():
    from lmkit.data.framing import format_inputs
    from lmkit.vocab import LMKIT

    idx, mask = format_inputs([[9] * 10, [9] * 3], "bert", 128, LMKIT, bucketed=True)
    assert idx.shape == (2, 16) and mask.sum().item() == 12 + 5  # 12 and 5 real positions, [CLS] and [SEP] in
    idx, _ = format_inputs([[9] * 127], "bert", 130, LMKIT, bucketed=True)
    assert idx.shape == (1, 130)  # 129 real positions: rounded up to 160, but the window is 130
