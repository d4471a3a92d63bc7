import json

from tests.conftest import invoke_lmkit


def test_demo_corpus_is_written_once(tmp_path):
    out = tmp_path / "corpus"
    first = invoke_lmkit("demo-corpus", "--out", str(out), check=True)
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
    from lmkit.data import conversations

    chats = [conversations.read(out / name) for name in ("chats.jsonl", "chats-test.jsonl")]
    assert sum(map(len, chats)) == len(records) and len(chats[1]) == len(records) // 10  # every tenth held out
    assert "conversations" in first.stdout
    # The final question is the same in every conversation: only the docstring in the first turn answers it.
    assert {c.messages[-2]["content"] for c in chats[0] + chats[1]} == {"What kind of object does it document?"}
    assert {c.messages[-1]["content"] for c in chats[1]} == {"A module.", "A class.", "A function."}
    # Two-digit additions, each operand pair in one file at most: nothing held out was trained on.
    arithmetic = {name: [json.loads(line) for line in (out / name).read_text().splitlines()]
                  for name in ("arithmetic.jsonl", "arithmetic-rl.jsonl", "arithmetic-prefs.jsonl",
                               "arithmetic-test.jsonl")}
    seen = [r["prompt"] for records in arithmetic.values() for r in records]
    assert len(seen) == len(set(seen)) == 6300 and "6,300 arithmetic problems" in first.stdout
    for record in arithmetic["arithmetic-test.jsonl"]:
        a, b = (int(x) for x in record["prompt"].removeprefix("What is ").removesuffix("?").split(" + "))
        assert record["response"] == record["answer"] == record["chosen"] == str(a + b) != record["rejected"]
    assert all(r["chosen"] != r["rejected"] for r in arithmetic["arithmetic-prefs.jsonl"])
    mtime = (out / "docstrings.jsonl").stat().st_mtime_ns
    second = invoke_lmkit("demo-corpus", "--out", str(out), check=True)
    assert "(0 files written)" in second.stdout and (out / "docstrings.jsonl").stat().st_mtime_ns == mtime
