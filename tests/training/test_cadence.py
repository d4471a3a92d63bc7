"""The run's cadences alone: what the metrics log keeps when a run resumes."""

import json

from lmkit.training.cadence import _drop_after


def test_a_resume_drops_later_lines_and_a_line_torn_by_a_kill(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": step, "loss": 1.0 / step} for step in (1, 2, 3, 4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "lo')  # kill -9 mid-append
    _drop_after(path, 3)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
    _drop_after(path, 3)  # a second resume from the same checkpoint keeps the same history
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:3]
