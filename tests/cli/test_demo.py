import json

from tests.conftest import run_lmkit


def test_demo_corpus_is_written_once(tmp_path):
    out = tmp_path / "corpus"
    first = run_lmkit("demo-corpus", "--out", str(out), check=True)
    assert "topic files" in first.stdout
    records = [json.loads(line) for line in (out / "docstrings.jsonl").read_text().splitlines()]
    assert {r["label"] for r in records} == {"module", "class", "function"}
    assert len(list((out / "topics").glob("*.txt"))) > 50
    mtime = (out / "docstrings.jsonl").stat().st_mtime_ns
    second = run_lmkit("demo-corpus", "--out", str(out), check=True)
    assert "(0 files written)" in second.stdout and (out / "docstrings.jsonl").stat().st_mtime_ns == mtime
