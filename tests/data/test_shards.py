import pyarrow as pa

from lmkit.data.shards import ShardWriter, iter_batches, make_batch, read_shard, schema


def test_round_trip_and_size_bound(tmp_path):
    rows = [list(range(i % 50 + 1)) for i in range(300)]
    writer = ShardWriter(tmp_path, "train", max_bytes=4000, schema_=schema("uint16", with_labels=True))
    for start in range(0, 300, 30):
        chunk = rows[start:start + 30]
        writer.write(make_batch(list(range(start, start + 30)), chunk, [len(r) * 3 for r in chunk],
                                [i % 2 for i in range(30)], "uint16"))
    shards = writer.close()
    assert len(shards) > 1 and sum(s["documents"] for s in shards) == 300
    assert sum(s["tokens"] for s in shards) == sum(len(r) for r in rows)
    tables = [read_shard(tmp_path / s["file"]) for s in shards]
    table = pa.concat_tables(tables)
    assert table.column("tokens").to_pylist() == rows
    assert table.schema.field("tokens").type == pa.list_(pa.uint16())
    assert table.column("id").to_pylist() == list(range(300))
    assert table.column("label").to_pylist() == [i % 2 for r in range(10) for i in range(30)]
    assert sum(b.num_rows for s in shards for b in iter_batches(tmp_path / s["file"])) == 300


def test_uint32_tokens_for_large_vocabularies(tmp_path):
    writer = ShardWriter(tmp_path, "validation", 1 << 20, schema("uint32", with_labels=False))
    writer.write(make_batch([1], [[70000, 3]], [5], None, "uint32"))
    (shard,) = writer.close()
    assert shard["file"] == "validation-00000.arrow"
    assert read_shard(tmp_path / shard["file"]).column("tokens").to_pylist() == [[70000, 3]]


def test_one_large_batch_is_cut_to_the_size_bound(tmp_path):
    rows = [list(range(40)) for _ in range(200)]  # 200 documents of 80 bytes of tokens each
    writer = ShardWriter(tmp_path, "train", max_bytes=2000, schema_=schema("uint16", with_labels=False))
    writer.write(make_batch(list(range(200)), rows, [1] * 200, None, "uint16"))
    shards = writer.close()
    assert len(shards) >= 8
    assert all(s["documents"] <= 25 for s in shards)  # ~2000 bytes / (80 + 20 bytes per row)
    assert sum(s["tokens"] for s in shards) == 8000
    table = pa.concat_tables([read_shard(tmp_path / s["file"]) for s in shards])
    assert table.column("id").to_pylist() == list(range(200))


def test_read_split_is_the_one_reader_of_a_datasets_shards(dataset):
    from lmkit import artifacts
    from lmkit.data.shards import read_split, token_lists

    loaded = artifacts.load(dataset)
    train = read_split(loaded, "train")
    info = loaded.stats["splits"]["train"]
    assert train.documents == info["documents"] and train.tokens == info["tokens"]
    assert [p.name for p in train.paths] == [s["file"] for s in info["shards"]]
    rows = sum(table.num_rows for table in train.tables())
    assert rows == sum(batch.num_rows for batch in train.batches()) == train.documents
    offsets, values = token_lists(next(train.tables()).column("tokens"))
    assert offsets[0] == 0 and len(values) == offsets[-1]
    empty = read_split(loaded, "test")  # the fixture has no test split
    assert (empty.documents, empty.paths, list(empty.tables())) == (0, (), [])
