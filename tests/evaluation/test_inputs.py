"""What evaluation reads: a dataset split memory-mapped, raw files tokenized, and the split chosen."""

import numpy as np
import pytest

from lmkit import artifacts
from lmkit.data import sources
from lmkit.data.shards import read_shard
from lmkit.errors import UserError
from lmkit.evaluation import inputs
from lmkit.tokenizer import Tokenizer
from tests.evaluation.helpers import labeled_dataset


def test_a_split_is_read_as_views_of_the_memory_mapped_shards(dataset):
    loaded = artifacts.load(dataset)
    documents = inputs.from_dataset(loaded, "validation")
    (shard,) = loaded.stats["splits"]["validation"]["shards"]
    table = read_shard(loaded.file(shard["file"]))
    assert [t.tolist() for t in documents.tokens] == table.column("tokens").to_pylist()
    assert documents.n_bytes == table.column("n_bytes").to_pylist() and documents.ids == table.column("id").to_pylist()
    assert not documents.tokens[0].flags.owndata  # a view, not a copy
    assert documents.labels is None
    assert len(inputs.from_dataset(loaded, "validation", limit=2)) == 2


def test_split_auto_is_validation_then_test(dataset, tmp_path):
    assert inputs.choose_split(artifacts.load(dataset), "auto") == "validation"
    only_test = labeled_dataset(dataset / "tokenizer", tmp_path, val_fraction=0.0, test_fraction=0.3)
    assert inputs.choose_split(artifacts.load(only_test), "auto") == "test"
    with pytest.raises(UserError, match="the validation split is empty"):
        inputs.choose_split(artifacts.load(only_test), "validation")
    documents = inputs.from_dataset(artifacts.load(only_test), "test")
    assert documents.labels and set(documents.labels) <= {"alpha", "beta", "gamma"}


def test_a_dataset_without_validation_or_test_is_refused(dataset, tmp_path):
    train_only = labeled_dataset(dataset / "tokenizer", tmp_path, val_fraction=0.0)
    with pytest.raises(UserError, match="has no validation or test documents to evaluate .*--split train"):
        inputs.choose_split(artifacts.load(train_only), "auto")


def test_raw_files_are_tokenized_as_given(dataset, tmp_path):
    tokenizer = Tokenizer.from_artifact(dataset / "tokenizer")
    path = tmp_path / "a.txt"
    path.write_text("First  paragraph, kept as is.\n\nSecond one: héllo.\n")
    documents = inputs.from_files([str(path)], tokenizer, sources.ReadOptions())
    assert [tokenizer.decode(t) for t in documents.tokens] == ["First  paragraph, kept as is.", "Second one: héllo."]
    assert documents.n_bytes == [29, len("Second one: héllo.".encode())]
    assert documents.ids == [f"{path}:1", f"{path}:3"] and documents.labels is None
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no documents to evaluate"):
        inputs.from_files([str(empty)], tokenizer, sources.ReadOptions())


def test_labels_are_required_for_every_document():
    documents = inputs.Documents([np.array([1])] * 2, [1, 1], ["f:1", "f:2"], ["a", None])
    with pytest.raises(UserError, match=r"f:2: has no label \(--label-field x\)"):
        inputs.require_labels(documents, "f", "--label-field x")
    with pytest.raises(UserError, match=r"f: has no labels; classification metrics need a gold label"):
        inputs.require_labels(inputs.Documents([], [], [], None), "f", "--label-field x")
