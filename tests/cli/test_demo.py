import json

from tests.conftest import run_lmkit


def test_demo_corpus_is_written_once(tmp_path):
    out = tmp_path / "corpus"
    first = run_lmkit("demo-corpus", "--out", str(out), check=True)
    assert "topic files" in first.stdout
    records = [json.loads(line) for line in (out / "docstrings.jsonl").read_text().splitlines()]
    assert {r["label"] for r in records} == {"module", "class", "function"}
    assert len(list((out / "topics").glob("*.txt"))) > 50
    pairs = [json.loads(line) for name in ("pairs.jsonl", "pairs-test.jsonl")
             for line in (out / name).read_text().splitlines()]
    assert len(pairs) > 300 and sum(p["label"] == "match" for p in pairs) == len(pairs) // 2  # balanced
    assert all(p["text"] and p["text_pair"] for p in pairs) and "text pairs" in first.stdout
    # Pretraining text in the labeled set's domain, but none of the labeled modules' own docstrings.
    stdlib = {p.stem for p in (out / "stdlib").glob("*.txt")}
    assert len(stdlib) > 100 and "json" not in stdlib and not any(name.startswith("json.") for name in stdlib)
    pretraining = "".join(p.read_text() for p in (out / "stdlib").glob("*.txt"))
    assert not [r["text"] for r in records if r["text"] in pretraining]  # _pydecimal repeats decimal's: left out
    mtime = (out / "docstrings.jsonl").stat().st_mtime_ns
    second = run_lmkit("demo-corpus", "--out", str(out), check=True)
    assert "(0 files written)" in second.stdout and (out / "docstrings.jsonl").stat().st_mtime_ns == mtime
