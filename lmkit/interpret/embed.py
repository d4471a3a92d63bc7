"""A dataset's hidden states as Arrow, for the user's own analysis (``lmkit inspect embed``).

The output is an ``embeddings`` artifact: ``embeddings.arrow`` (an Arrow IPC file, one row per document in
the dataset's order, split by split) and the manifest with its lineage (the checkpoint and the dataset).
Columns: ``split``, ``id``, ``label`` (the label name, where the dataset has labels), ``n_tokens`` (what
the model read, its input layout included) and, per chosen layer L (states.py: 0 = embeddings, n_layer =
final), ``layer{L}``: a fixed-size list of d_model float32, the pooled vector; or with ``--pooling none``,
a list of them, one per input position. Documents are read from the memory-mapped shards and written a
record batch at a time, so memory stays bounded by the batch, not the dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.data.shards import SPLITS, read_split, token_lists
from lmkit.errors import UserError
from lmkit.evaluation import inputs
from lmkit.interpret.states import batches, encode_layers, require_transformer, resolve_pooling, transformer_body
from lmkit.models.layers import pool_states
from lmkit.progress import reporter

COMMAND = "lmkit inspect embed"
FILE = "embeddings.arrow"
ROWS_PER_BATCH = 512  # documents per Arrow record batch written (and held in memory)


def _layers(text: str, n_layer: int) -> list[int]:
    """--layers: comma-separated indices, negative from the end (-1 = final)."""
    try:
        chosen = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--layers: expected comma-separated layer indices such as 0,-1, got {text!r}") from None
    if not chosen:
        raise UserError("--layers: give at least one layer index")
    out = []
    for layer in chosen:
        if not -(n_layer + 1) <= layer <= n_layer:
            raise UserError(f"--layers {layer}: the model has layers 0 (embeddings) to {n_layer} (final)")
        out.append(layer % (n_layer + 1))
    return sorted(set(out))


def _splits(dataset: artifacts.Artifact, requested: str) -> list[str]:
    present = [name for name in SPLITS if dataset.stats["splits"].get(name, {}).get("documents")]
    if requested == "all":
        return present
    chosen = [part.strip() for part in requested.split(",") if part.strip()]
    for name in chosen:
        if name not in SPLITS:
            raise UserError(f"--split {name}: not one of all, {', '.join(SPLITS)}")
        if name not in present:
            raise UserError(f"{dataset.path}: the {name} split is empty (splits with documents: "
                            f"{', '.join(present) or 'none'})")
    return chosen


def _documents(dataset: artifacts.Artifact, split: str) -> Iterator[tuple[list, np.ndarray, np.ndarray | None]]:
    """(token arrays, ids, label indices or None) of ``split``, at most ROWS_PER_BATCH documents at a time."""
    for batch in read_split(dataset, split).batches():
        offsets, values = token_lists(batch.column("tokens"))
        ids = batch.column("id").to_numpy()
        labels = batch.column("label").to_numpy() if "label" in batch.schema.names else None
        for start in range(0, batch.num_rows, ROWS_PER_BATCH):
            stop = min(start + ROWS_PER_BATCH, batch.num_rows)
            yield ([values[offsets[i]:offsets[i + 1]] for i in range(start, stop)], ids[start:stop],
                   None if labels is None else labels[start:stop])


def write_embeddings(checkpoint_path: Path, dataset_path: Path, out: Path, split: str = "all",
                     layers: str = "-1", pooling: str = "auto", force: bool = False) -> artifacts.Artifact:
    checkpoint = read_checkpoint(checkpoint_path)
    require_transformer(checkpoint, COMMAND)  # before the data is read
    per_token = pooling == "none"
    pooling = "none" if per_token else resolve_pooling(checkpoint, pooling)
    dataset = artifacts.load(dataset_path, kind="dataset")
    inputs.require_same_tokenizer(dataset, checkpoint, checkpoint_path)
    splits = _splits(dataset, split)
    config = checkpoint.model_config
    chosen = _layers(layers, config.n_layer)
    names = dataset.stats.get("labels", {}).get("names")
    width = config.d_model
    vector = pa.list_(pa.float32(), width)
    fields = [pa.field("split", pa.string()), pa.field("id", pa.int64())]
    fields += [pa.field("label", pa.string())] if names else []
    fields += [pa.field("n_tokens", pa.int32())]
    fields += [pa.field(f"layer{layer}", pa.list_(vector) if per_token else vector) for layer in chosen]
    schema = pa.schema(fields)
    identity = {"split": splits, "layers": chosen, "pooling": pooling}
    parents = [{"role": "checkpoint", "id": checkpoint.artifact.id}, {"role": "dataset", "id": dataset.id}]
    recipe = artifacts.make_recipe("embeddings", identity, [], parents)
    with artifacts.ArtifactWriter(out, "embeddings", recipe, force=force) as writer:
        if writer.up_to_date:
            reporter.info(f"{out}: up to date")
            return writer.existing
        body = transformer_body(checkpoint, checkpoint.inference_model(), COMMAND)
        counts: dict[str, int] = {}
        with pa.OSFile(str(writer.tmp / FILE), "wb") as sink, pa.ipc.new_file(sink, schema) as file:
            for name in splits:
                counts[name] = 0
                with reporter.task(f"embedding {name}", total=dataset.stats["splits"][name]["documents"]) as task:
                    for tokens, ids, labels in _documents(dataset, name):
                        file.write_batch(_batch(schema, body, checkpoint, tokens, ids, labels, names, name, chosen,
                                                pooling))
                        counts[name] += len(tokens)
                        task.advance(len(tokens))
        stats: dict[str, Any] = {"documents": counts, "layers": chosen, "pooling": pooling, "d_model": width,
                                 "columns": schema.names}
        inputs_record = {"artifacts": [artifacts.describe_parent("checkpoint", checkpoint.artifact, writer.out),
                                     artifacts.describe_parent("dataset", dataset, writer.out)]}
        return writer.commit(identity, inputs_record, stats)


def _batch(schema: pa.Schema, body, checkpoint, tokens: list, ids: np.ndarray, labels: np.ndarray | None,
           names: list[str] | None, split: str, layers: list[int], pooling: str) -> pa.RecordBatch:
    n, width = len(tokens), body.config.d_model
    lengths = np.zeros(n, dtype=np.int32)
    pooled = {layer: np.zeros((n, width), dtype=np.float32) for layer in layers}
    states: dict[int, list] = {layer: [None] * n for layer in layers}
    for rows, idx, mask in batches(tokens, body.config.arch, checkpoint.max_len, checkpoint.specials):
        lengths[rows] = mask.sum(dim=1).numpy()
        hidden = encode_layers(body, idx, mask)
        for layer in layers:
            if pooling == "none":
                for row, state, length in zip(rows, hidden[layer].float().numpy(), mask.sum(dim=1).tolist(),
                                             ):
                    states[layer][row] = state[:length]
            else:
                pooled[layer][rows] = pool_states(hidden[layer].float(), mask, pooling).numpy()
    columns: list[pa.Array] = [pa.array([split] * n, pa.string()), pa.array(ids.astype(np.int64))]
    if names:
        columns.append(pa.array([names[i] for i in labels] if labels is not None else [None] * n, pa.string()))
    columns.append(pa.array(lengths))
    for layer in layers:
        if pooling == "none":
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
            flat = np.concatenate(states[layer]).reshape(-1)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), width)
            columns.append(pa.ListArray.from_arrays(pa.array(offsets), inner))
        else:
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(pooled[layer].reshape(-1)), width))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
