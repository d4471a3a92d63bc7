"""The mixture of datasets: shares kept exactly per round of the schedule, a pure function of the position,
each source read epoch after epoch of its own permutations."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmkit.data.packing import MIXTURE_PERIOD, Mixture


class Numbered:
    """A source whose window i is the row [base + i] (inputs) and [i] (targets)."""

    def __init__(self, base: int, count: int):
        self.base, self.count = base, count

    def batch(self, indices):
        rows = torch.as_tensor(indices)[:, None]
        return rows + self.base, rows


def test_shares_per_round_and_purity():
    mixture = Mixture([Numbered(0, 50), Numbered(1000, 7), Numbered(2000, 300)], [0.6, 0.1, 0.3], seed=3)
    positions = np.arange(3 * MIXTURE_PERIOD)
    inputs, targets = mixture.batch(positions)
    sources = (inputs[:, 0] // 1000).numpy()
    for i, share in enumerate([0.6, 0.1, 0.3]):
        assert abs(np.sum(sources[:MIXTURE_PERIOD] == i) - share * MIXTURE_PERIOD) < 1  # largest remainders
    # any piece of the positions reads the same windows as all at once (resume, other batch splits)
    piece, _ = mixture.batch(positions[1234:1300])
    assert torch.equal(piece, inputs[1234:1300])
    # a source's windows run epoch after epoch: each epoch reads every window once
    small = np.sort(targets[sources == 1, 0].numpy()[:7])
    assert small.tolist() == list(range(7))
    assert mixture.epochs(3 * MIXTURE_PERIOD) == pytest.approx([np.sum(sources == i) / n for i, n in
                                                                  enumerate([50, 7, 300])])


def test_a_source_with_a_tiny_share_still_gets_a_slot():
    mixture = Mixture([SimpleNamespace(count=10)] * 2, [1.0, 1e-9], seed=0)
    assert mixture.slots[1] == 1 and sum(mixture.slots) == MIXTURE_PERIOD


def test_masked_windows_mix_deterministically_with_the_windows_their_count_promises():
    from lmkit.data.packing import MaskedWindows, MaskingSettings, TokenStream, masked_window_count, seeded_generator

    streams = [TokenStream(np.arange(10, 10 + n, dtype=np.int32) % 90 + 10, 1, n) for n in (400, 130)]
    parts = [MaskedWindows(stream, 12, 100, MaskingSettings()) for stream in streams]
    assert [p.count for p in parts] == [masked_window_count(400, 12), masked_window_count(130, 12)] == [40, 13]
    mixture = Mixture(parts, [0.5, 0.5], seed=1)
    positions = np.arange(100, 116)
    first = mixture.batch(positions, seeded_generator(1, 100))
    again = mixture.batch(positions, seeded_generator(1, 100))
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # (resume reads the same batch)
    inputs, targets = first
    assert inputs.shape == targets.shape == (16, 12) and bool((targets != -100).any())
    # training passes one generator per row (MaskedLM._read): each row is masked by its own position's
    # generator wherever it falls, across the sources and in a batch of any size
    generators = [seeded_generator(1, int(p)) for p in positions]
    batched = mixture.batch(positions, generators)
    for row, position in enumerate(positions):
        alone = mixture.batch(positions[row:row + 1], [seeded_generator(1, int(position))])
        assert torch.equal(alone[0][0], batched[0][row]) and torch.equal(alone[1][0], batched[1][row])
