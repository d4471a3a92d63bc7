"""Right-padded batches of token rows (lmkit.data.framing.pad_rows): the width is the longest row rounded up to a
multiple, never past the limit and never below the longest row."""

import torch

from lmkit.data.framing import pad_rows


def test_rows_are_padded_to_a_multiple_within_the_limit():
    rows = [[5, 6, 7], [8]]
    idx, mask, types = pad_rows(rows, None, 0, multiple=8)
    assert idx.shape == (2, 8) and idx[0, :3].tolist() == [5, 6, 7] and int(idx[0, 3:].sum()) == 0
    assert mask.sum(dim=1).tolist() == [3, 1] and not types.any()
    assert pad_rows(rows, None, 0, multiple=8, limit=6)[0].shape == (2, 6)   # the limit caps the rounding
    assert pad_rows(rows, None, 0, multiple=8, limit=2)[0].shape == (2, 3)   # never below the longest row
    assert pad_rows(rows, None, 0)[0].shape == (2, 3)                        # multiple 1: the longest row
    _, _, segments = pad_rows([[1, 2], [3]], [[0, 1], [0]], 0, multiple=4)
    assert torch.equal(segments, torch.tensor([[0, 1, 0, 0], [0, 0, 0, 0]]))
