"""Spill files between the preprocess passes: named rows round-trip exactly, and chunks are cut by the
documents alone."""

from lmkit.data.dedup import pair_digest, text_digest
from lmkit.data.spill import ChunkedSpill, Spill, SpillRow, read_batches, read_rows


def rows(n: int) -> list[SpillRow]:
    out = []
    for i in range(n):
        text = f"document {i} é 東京"
        if i % 3 == 0:  # a pair, labeled, with a language
            out.append(SpillRow(text, "yes", pair_digest(text, f"second {i}"), "en", f"second {i}"))
        else:
            out.append(SpillRow(text, None, text_digest(text), None, None))
    return out


def test_rows_round_trip_as_named_rows(tmp_path):
    written = rows(2500)  # more than one 1024-row batch
    spill = Spill(tmp_path / "a.arrows")
    for row in written:
        spill.add(row)
    spill.close()
    read = list(read_rows(tmp_path / "a.arrows"))
    assert read == written and all(isinstance(row, SpillRow) for row in read)
    assert read[0].pair == "second 0" and read[1].pair is None and read[0].digest == written[0].digest
    assert [len(batch) for batch in read_batches(tmp_path / "a.arrows")] == [1024, 1024, 452]
    assert spill.count == 2500
    assert spill.bytes == sum(len(r.text.encode()) + (len(r.pair.encode()) if r.pair else 0) for r in written)


def test_chunked_spill_cuts_by_documents_and_keeps_order(tmp_path):
    written = rows(25)
    spill = ChunkedSpill(tmp_path, "train", max_docs=10, max_bytes=1 << 20)
    for row in written:
        spill.add(row)
    spill.close()
    assert [path.name for path in spill.chunks] == ["train-00000.arrows", "train-00001.arrows", "train-00002.arrows"]
    assert [len(list(read_rows(path))) for path in spill.chunks] == [10, 10, 5]
    assert list(spill.rows()) == written and spill.count == 25
