"""Report files: markdown, the confusion matrix image, reading reports back and comparing them."""

import json

import pytest

from lmkit.errors import UserError
from lmkit.evaluation import report


def sample(**changes):
    base = {"task": "classify", "checkpoint": {"path": "runs/c/final", "id": "0123456789abcdef", "arch": "gpt",
                                               "objective": "classify"},
            "data": {"kind": "files", "files": ["eval.jsonl"]}, "examples": 4,
            "metrics": {"accuracy": 0.75, "macro_f1": 0.5}, "method": {"method": "argmax", "max_len": 128},
            "speed": {"tokens": 100, "seconds": 0.5, "tokens_per_s": 200.0, "device": "cpu", "precision": "fp32"},
            "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2},
                          "b": {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2}},
            "confusion": {"labels": ["a", "b"], "matrix": [[1, 1], [0, 2]]}, "notes": ["a note"]}
    return {**base, **changes}


def test_markdown_holds_metrics_classes_and_confusion():
    text = report.markdown(sample())
    assert text.startswith("# Evaluation report: classify")
    assert "| accuracy | 0.7500 |" in text and "| a | 1.0000 | 0.5000 | 0.6667 | 2 |" in text
    assert "| gold \\ predicted | a | b |" in text and "| b | 0 | 2 |" in text
    assert "200 tokens/s" in text and "Note: a note" in text


def test_confusion_png_is_written_and_deterministic(tmp_path):
    pytest.importorskip("matplotlib")
    assert report.write_confusion_png(tmp_path / "a.png", ["a", "b"], [[1, 1], [0, 2]])
    assert report.write_confusion_png(tmp_path / "b.png", ["a", "b"], [[1, 1], [0, 2]])
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_without_matplotlib_no_png_and_no_failure(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert report.write_confusion_png(tmp_path / "c.png", ["a", "b"], [[1, 0], [0, 1]]) is False
    assert not (tmp_path / "c.png").exists()


def test_compare_lists_differences_and_what_differs_in_method():
    other = sample(metrics={"accuracy": 0.5, "mcc": 0.1}, method={"method": "argmax", "max_len": 64})
    comparison = report.compare(sample(), other)
    rows = {row["metric"]: row for row in comparison["rows"]}
    assert rows["accuracy"] == {"metric": "accuracy", "this": 0.75, "other": 0.5, "delta": 0.25}
    assert rows["macro_f1"]["other"] is None and rows["macro_f1"]["delta"] is None
    assert rows["mcc"]["this"] is None
    assert comparison["warnings"] == ["different methods: max_len 128 vs 64"]
    assert report.compare(sample(), sample(task="lm"))["warnings"] == ["different tasks: classify vs lm"]


def test_load_report_refuses_what_is_not_a_report(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(sample()))
    assert report.load_report(tmp_path / "report.json")["metrics"]["accuracy"] == 0.75
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable report.json"):
        report.load_report(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(UserError, match=r"not an lmkit report \(no \"metrics\" object\)"):
        report.load_report(tmp_path / "other.json")
    with pytest.raises(UserError, match="not an lmkit artifact"):
        report.load_report(tmp_path)  # a directory without a manifest
