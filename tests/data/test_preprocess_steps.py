"""The preprocess stage's steps below the stage: cleaning a batch, batching, the survivors' bookkeeping, and the
local executor's pass one, which must decide the same for any number of workers."""

import json
from collections import Counter

import pytest

from lmkit.data.dedup import pair_digest, text_digest
from lmkit.data.executors import LocalExecutor, ReadJob
from lmkit.data.filters import FILTERS, FilterThresholds
from lmkit.data.preprocess_steps import Cleaner, CleanSettings, Kept, SourceDocument, SourceInput, batches, documents
from lmkit.data.sources import ReadOptions
from lmkit.data.spill import SpillRow
from lmkit.data.split import split_of
from lmkit.data.survivors import PassOneResult, Survivors

GOOD = "A plain sentence of ordinary words, long enough for every quality filter to keep it."


def settings(near_dedup: bool = False) -> CleanSettings:
    return CleanSettings("NFC", True, tuple(FILTERS), FilterThresholds(), near_dedup, 0.8)


def test_cleaner_keeps_a_document_as_its_spill_row_or_names_why_not():
    kept, empty, pair_empty, short, pair = Cleaner(settings()).clean_batch([
        SourceDocument("  " + GOOD + "  ", "a", "train", None),
        SourceDocument("   ", None, "train", None),
        SourceDocument(GOOD, None, "train", "  "),
        SourceDocument("tiny", None, "validation", None),
        SourceDocument(GOOD, None, "validation", "A second text."),
    ])
    assert kept == Kept(SpillRow(GOOD, "a", text_digest(GOOD), None, None), "train", None)
    assert (empty, pair_empty, short) == ("empty", "empty_pair", "too_short")
    assert pair == Kept(SpillRow(GOOD, None, pair_digest(GOOD, "A second text."), None, "A second text."),
                        "validation", None)


def test_cleaner_keys_documents_for_near_dedup_only_when_asked():
    (with_keys,) = Cleaner(settings(near_dedup=True)).clean_batch([SourceDocument(GOOD, None, "train", None)])
    (without,) = Cleaner(settings()).clean_batch([SourceDocument(GOOD, None, "train", None)])
    assert isinstance(with_keys, Kept) and with_keys.keys and all(isinstance(key, int) for key in with_keys.keys)
    assert isinstance(without, Kept) and without.keys is None


def test_batches_cut_by_count_and_by_text_length():
    docs = [SourceDocument("x" * 10, None, "train", None) for _ in range(7)]
    assert [len(b) for b in batches(docs, max_docs=3, max_bytes=1000)] == [3, 3, 1]
    assert [len(b) for b in batches(docs, max_docs=100, max_bytes=25)] == [3, 3, 1]
    assert [item for batch in batches(docs, max_docs=3) for item in batch] == docs
    assert list(batches([])) == []


def test_documents_without_a_required_label_are_counted_as_dropped(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"text": GOOD, "label": "x"}) + "\n" + json.dumps({"text": GOOD}) + "\n")
    counts, dropped = Counter(), Counter()
    found = list(documents(str(path), "train", ReadOptions(label_field="label"), counts, dropped, True))
    assert found == [SourceDocument(GOOD, "x", "train", None)] and dropped == {"missing_label": 1}


def test_survivors_route_documents_and_count_duplicates(tmp_path):
    counts = Counter({"encoding_skipped": 2})
    survivors = Survivors(tmp_path, counts, val_fraction=0.5, test_fraction=0.0, chunk_docs=100, chunk_bytes=1 << 20)
    rows = [SpillRow(f"{GOOD} {i}", "ab"[i % 2], text_digest(f"{GOOD} {i}"), "en", None) for i in range(40)]
    for row in rows:
        survivors.add(row, "train", None)
    survivors.add(rows[0], "train", "exact_duplicate")
    survivors.add(rows[1], "validation", "near_duplicate")
    survivors.add(rows[2], "validation", None)
    result = survivors.close()
    assert isinstance(result, PassOneResult)
    assert result.dropped == {"exact_duplicate": 1, "near_duplicate": 1, "invalid_utf8": 2}
    assert result.counts["validation_duplicates"] == 1
    expected = Counter(split_of(row.digest, 0.5, 0.0) for row in rows) + Counter({"validation": 1})
    assert {split: spill.count for split, spill in result.spills.items() if spill.count} == expected
    assert 0 < expected["train"] < 40  # both splits are used: the routing is tested, not one branch
    assert sum(result.languages[split].documents["en"] for split in result.languages) == 41
    assert sum(sum(counter.values()) for counter in result.label_counts.values()) == 41


@pytest.mark.parametrize("workers", [1, 2])
def test_the_local_executor_keeps_the_first_of_each_duplicate_in_input_order(tmp_path, workers):
    texts = [f"{GOOD} Number {i} of many." for i in range(30)]
    (tmp_path / "a.txt").write_text("\n\n".join(texts[:20] + ["tiny"]) + "\n")
    (tmp_path / "b.txt").write_text("\n\n".join(texts[15:] + texts[:2]) + "\n")
    inputs = [SourceInput(str(tmp_path / "a.txt"), "train"), SourceInput(str(tmp_path / "b.txt"), "train")]
    spill_dir = tmp_path / f"spill-{workers}"
    spill_dir.mkdir()
    counts = Counter()
    survivors = Survivors(spill_dir, counts, 0.0, 0.0, chunk_docs=100, chunk_bytes=1 << 20)
    job = ReadJob(inputs, ReadOptions(), settings(), exact_dedup=True, label_required=False, spill_dir=spill_dir,
                  total_bytes=None)
    with LocalExecutor(workers) as executor:
        executor.read_and_dedup(job, survivors)
    result = survivors.close()
    assert [row.text for row in result.spills["train"].rows()] == texts
    assert result.dropped == {"too_short": 1, "exact_duplicate": 7} and counts["records"] == 38
