import math

import pytest

from lmkit.training.schedule import lr_at


def lr(step, schedule, **kw):
    return lr_at(step, lr=1.0, max_steps=110, warmup_steps=10, schedule=schedule, min_lr_ratio=0.1, **kw)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear(schedule):
    assert [lr(s, schedule) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr(9, schedule) == pytest.approx(1.0)


def test_cosine_values():
    assert lr(10, "cosine") == pytest.approx(1.0)
    assert lr(60, "cosine") == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr(110, "cosine") == pytest.approx(0.1)
    assert lr(500, "cosine") == pytest.approx(0.1)  # past the end: stays at the floor


def test_linear_constant_and_wsd():
    assert lr(60, "linear") == pytest.approx(0.55)
    assert lr(100, "constant") == 1.0
    # wsd: constant until the last 20% (step 88), then linear to the floor
    assert lr(87, "wsd", decay_fraction=0.2) == 1.0
    assert lr(99, "wsd", decay_fraction=0.2) == pytest.approx(1.0 - 0.9 * 11 / 22)
    assert lr(110, "wsd", decay_fraction=0.2) == pytest.approx(0.1)
