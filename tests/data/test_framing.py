"""Right-padded batches of token rows (lmkit.data.framing.pad_rows): the width is the longest row, or bucketed, rounded
up to one of a few widths (padded_width), never past the limit and never below the longest row."""

import torch

from lmkit.data.framing import pad_rows, padded_width


def test_rows_are_padded_to_a_bucket_within_the_limit():
    rows = [[5, 6, 7], [8]]
    idx, mask, types = pad_rows(rows, None, 0, bucketed=True)
    assert idx.shape == (2, 8) and idx[0, :3].tolist() == [5, 6, 7] and int(idx[0, 3:].sum()) == 0
    assert mask.sum(dim=1).tolist() == [3, 1] and not types.any()
    assert pad_rows(rows, None, 0, bucketed=True, limit=6)[0].shape == (2, 6)   # the limit caps the rounding
    assert pad_rows(rows, None, 0, bucketed=True, limit=2)[0].shape == (2, 3)   # never below the longest row
    assert pad_rows(rows, None, 0)[0].shape == (2, 3)                           # not bucketed: the longest row
    _, _, segments = pad_rows([[1, 2], [3]], [[0, 1], [0]], 0, bucketed=True)
    assert torch.equal(segments, torch.tensor([[0, 1] + [0] * 6, [0] * 8]))
    assert pad_rows([[1] * 65], None, 0, bucketed=True)[0].shape == (1, 80)      # past 64: steps of 16


def test_padded_widths_are_few_and_close_to_the_longest_row():
    """Multiples of 8 up to 64, then four widths per doubling (16 up to 128, 32 up to 256, ...), none below the
    longest row, and past 64 less than a quarter wider than it: the batches of a run repeat a few shapes."""
    assert [padded_width(n) for n in (1, 8, 9, 64, 65, 80, 81, 128, 129, 256, 257)] == \
        [8, 8, 16, 64, 80, 80, 96, 128, 160, 256, 320]
    widths = [padded_width(n) for n in range(1, 1025)]
    assert all(w >= n and w % 8 == 0 for n, w in enumerate(widths, start=1))
    assert all(w < 1.25 * n for n, w in enumerate(widths, start=1) if n > 64)
    assert widths == sorted(widths)
    for low in (64, 128, 256, 512):  # each doubling past 64 holds four widths
        assert len({w for n, w in enumerate(widths, start=1) if low < n <= 2 * low}) == 4
    assert len(set(widths)) == 8 + 4 * 4  # against 128 multiples of 8 up to 1024
