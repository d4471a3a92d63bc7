"""lmkit inspect embed: the Arrow rows are the model's states of each document, in the dataset's order,
written a batch at a time; the artifact verifies and knows its lineage; bad flags are refused."""

import json

import numpy as np
import pyarrow as pa
import pytest

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.data.framing import format_inputs
from lmkit.data.labeled import read_labeled
from lmkit.interpret import embed
from lmkit.interpret.states import encode_layers, pooled_layers
from tests.conftest import invoke_lmkit


def read(path):
    with pa.memory_map(str(path / embed.FILE)) as source:
        reader = pa.ipc.open_file(source)
        return reader.read_all(), reader.num_record_batches


def test_pooled_rows_are_the_models_states_a_batch_at_a_time(gpt, labeled, tmp_path, monkeypatch):
    monkeypatch.setattr(embed, "ROWS_PER_BATCH", 16)
    artifact = embed.write_embeddings(gpt, labeled, tmp_path / "vectors", layers="0,-1")
    table, n_batches = read(artifact.path)
    train = read_labeled(artifacts.load(labeled), "train")
    assert table.num_rows == len(train.tokens) and n_batches == -(-len(train.tokens) // 16)
    assert table.column_names == ["split", "id", "label", "n_tokens", "layer0", "layer2"]
    checkpoint = read_checkpoint(gpt)
    expected = pooled_layers(checkpoint.inference_model(), train.tokens, checkpoint.specials, checkpoint.max_len,
                             "mean")
    for column, layer in (("layer0", 0), ("layer2", 2)):
        got = np.stack(table.column(column).to_numpy(zero_copy_only=False))
        assert np.allclose(got, expected[layer], atol=1e-5)
    names = json.loads((labeled / "manifest.json").read_text())["stats"]["labels"]["names"]
    assert table.column("label").to_pylist() == [names[i] for i in train.labels]
    assert artifact.stats["documents"] == {"train": len(train.tokens)}
    tree = artifacts.lineage(artifact.path)  # what `lmkit lineage` draws
    assert [(p["role"], p["kind"]) for p in tree["parents"]] == [("checkpoint", "checkpoint"), ("dataset", "dataset")]
    assert artifacts.verify_tree(artifact.path)[1] == []


def test_every_position_with_pooling_none(bert, dataset, tmp_path):
    out = tmp_path / "states"
    result = invoke_lmkit("inspect", "embed", str(bert), str(dataset), "--split", "validation", "--pooling", "none",
                          "--out", str(out), check=True)
    assert "layers 2 (every position, " in result.stdout
    table, _ = read(out)
    assert "label" not in table.column_names  # an unlabeled dataset
    checkpoint = read_checkpoint(bert)
    model = checkpoint.inference_model()
    first = artifacts.load(dataset)
    from lmkit.evaluation.inputs import from_dataset

    tokens = from_dataset(first, "validation", limit=1).tokens[0].tolist()
    idx, mask = format_inputs([tokens], "bert", checkpoint.max_len, checkpoint.specials)
    states = encode_layers(model, idx, mask)[-1][0]
    row = np.array(table.column("layer2")[0].as_py(), dtype=np.float32)
    assert row.shape == (table.column("n_tokens")[0].as_py(), model.config.d_model) == tuple(states.shape)
    assert np.allclose(row, states.numpy(), atol=1e-5)
    again = invoke_lmkit("inspect", "embed", str(bert), str(dataset), "--split", "validation", "--pooling", "none",
                         "--out", str(out), check=True)
    assert "up to date" in again.stderr


@pytest.mark.parametrize("flags,message", [
    (("--layers", "3"), "--layers 3: the model has layers 0 (embeddings) to 2 (final)"),
    (("--layers", "a"), "--layers: expected comma-separated layer indices"),
    (("--split", "test"), "the test split is empty"),
    (("--split", "dev"), "--split dev: not one of all, train, validation, test"),
    (("--pooling", "cls"), "--pooling cls: not a pooling of a gpt model"),
])
def test_refusals_write_nothing(gpt, dataset, tmp_path, flags, message):
    result = invoke_lmkit("inspect", "embed", str(gpt), str(dataset), "--out", str(tmp_path / "v"), *flags)
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "v").exists()
