"""The demo corpus's text pairs: balanced, seeded, every description used once, a held-out tenth."""

import collections

from lmkit.data.demo_pairs import pair_records


def docstrings(n=60):
    return [{"text": f"Summary line number {i} of an object.\n\nThe description of object {i}, long enough "
                     f"to be one.", "meta": {"name": f"module.object{i}"}} for i in range(n)]


def test_pairs_are_balanced_seeded_and_use_each_description_once():
    records = docstrings() + [{"text": "Short.\n\nA first line too short to summarize anything at all here.",
                               "meta": {"name": "short"}},
                              {"text": "A summary line without any description after it.", "meta": {"name": "alone"}}]
    train, test = pair_records(records)
    examples = train + test
    assert len(train) == 54 and [e["meta"]["name"] for e in test] == [f"module.object{i}" for i in range(9, 60, 10)]
    assert collections.Counter(e["label"] for e in examples) == {"match": 30, "mismatch": 30}
    assert sorted(e["text_pair"] for e in examples) == sorted(r["text"].split("\n", 1)[1].strip() for r in records[:60])
    for example in examples:
        same = example["meta"]["pair_of"] == example["meta"]["name"]
        assert example["label"] == ("match" if same else "mismatch")
        assert example["text_pair"].startswith(f"The description of object {example['meta']['pair_of'][13:]},")
    assert pair_records(records) == (train, test) and pair_records(records, seed=1) != (train, test)
