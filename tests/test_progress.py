"""Progress counters: a resumed run's earlier work does not inflate the rate, and a deadline bounds the ETA."""

import pytest

from lmkit import progress
from lmkit.progress import Reporter, Task


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def test_work_done_before_this_process_counts_towards_the_total_not_the_rate(clock):
    task = Task(Reporter(quiet=True), "training", total=200, unit="steps", initial=100)
    clock.now += 10
    task.advance(10)  # 10 steps in 10 s, after 100 steps of an earlier launch
    assert task.rate() == pytest.approx(1.0)
    assert task.remaining() == pytest.approx(90.0)
    assert "110 steps / 200 steps (55%), 1.0 steps/s, ETA 0:01:30" in task.line()


def test_a_deadline_bounds_the_eta_with_or_without_a_total(clock):
    timed = Task(Reporter(quiet=True), "training", total=None, unit="steps", deadline=clock.now + 360)
    clock.now += 60
    timed.advance(5)
    assert timed.remaining() == pytest.approx(300.0) and "ETA 0:05:00" in timed.line()
    both = Task(Reporter(quiet=True), "training", total=1000, unit="steps", deadline=clock.now + 30)
    clock.now += 10
    both.advance(10)  # 990 steps left at 1 step/s, but the deadline is 20 s away
    assert both.remaining() == pytest.approx(20.0)
    assert Task(Reporter(quiet=True), "x", total=None, unit="steps").remaining() is None


def test_below_one_step_a_second_the_line_shows_seconds_per_step_and_the_right_eta(clock):
    task = Task(Reporter(quiet=True), "training", total=100, unit="steps")
    clock.now += 14
    task.advance(10)  # 1.4 s a step: a rate of 0.71 steps/s, which an integer count would show as "0 steps/s"
    assert "10 steps / 100 steps (10%), 1.4 s/step, ETA 0:02:06" in task.line()
    fast = Task(Reporter(quiet=True), "training", total=None, unit="steps")
    clock.now += 1
    fast.advance(250)
    assert "250 steps/s" in fast.line()
