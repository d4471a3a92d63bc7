"""Linear probes on frozen hidden states (``lmkit inspect probe``): how much of a labeled task each layer's
representation already holds, against the same architecture with random weights.

For every layer (states.py: 0 = embeddings, n_layer = final), each text's states are pooled into one
vector, and a logistic regression (features standardized on train, L2 with C = 1, scikit-learn) is fitted
on the dataset's train split and scored on its validation or test split. The control is a model of the
same config with freshly initialized weights (seeded): what a probe reads from the architecture and the
token identities alone. The probe never changes the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmkit import artifacts
from lmkit.checkpoint import read_checkpoint
from lmkit.data.labeled import read_labeled
from lmkit.data.split import seeded_subset
from lmkit.errors import UserError
from lmkit.evaluation import inputs
from lmkit.interpret import write_files
from lmkit.interpret.states import pooled_layers, require_transformer, resolve_pooling, transformer_body
from lmkit.models import build_model

COMMAND = "lmkit inspect probe"
EXTRA = "lmkit[inspect]"
PROBE_C = 1.0


@dataclass
class ProbeResult:
    checkpoint: str
    dataset: str
    split: str
    pooling: str
    train_examples: int
    eval_examples: int
    labels: list[str]
    majority_accuracy: float          # always predicting train's most frequent class
    layers: list[dict[str, Any]] = field(default_factory=list)  # {layer, accuracy, macro_f1, control_*}

    def best(self) -> dict[str, Any]:
        return max(self.layers, key=lambda row: (row["accuracy"], -row["layer"]))


def require_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise UserError(f"{COMMAND} fits its probes with scikit-learn; install {EXTRA}") from None


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray
              ) -> tuple[float, float]:
    """(accuracy, macro F1) on eval of a logistic regression fitted on train."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=2000))
    predicted = model.fit(train_x, train_y).predict(eval_x)
    return float(np.mean(predicted == eval_y)), float(f1_score(eval_y, predicted, average="macro"))


def run_probe(checkpoint_path: Path, dataset_path: Path, split: str = "auto", pooling: str = "auto",
              max_train_examples: int = 5000, seed: int = 0) -> ProbeResult:
    from lmkit.plotting import require_matplotlib

    require_sklearn()
    require_matplotlib(COMMAND)  # before any compute: the plot is one of the outputs
    checkpoint = read_checkpoint(checkpoint_path)
    require_transformer(checkpoint, COMMAND)  # before the data is read
    pooling = resolve_pooling(checkpoint, pooling)
    dataset = artifacts.load(dataset_path, kind="dataset")
    if "labels" not in dataset.stats:
        raise UserError(f"{dataset.path}: has no labels; a probe needs a labeled dataset "
                        "(lmkit preprocess --label-field NAME)")
    inputs.require_same_tokenizer(dataset, checkpoint, checkpoint_path)
    if split == "train":
        raise UserError("--split train: the probes are fitted on train; score them on validation or test")
    splits = dataset.stats["splits"]
    if split == "auto" and not any(splits.get(name, {}).get("documents") for name in ("validation", "test")):
        raise UserError(f"{dataset.path}: has no validation or test split to score the probes on (preprocess "
                        "with --val-fraction or --test-fraction)")
    split = inputs.choose_split(dataset, split)
    names = list(dataset.stats["labels"]["names"])
    train, scored = read_labeled(dataset, "train"), read_labeled(dataset, split)
    chosen = seeded_subset(len(train.tokens), max_train_examples, seed)
    if chosen is not None:
        train = train.subset(chosen)
    if len(np.unique(train.labels)) < 2:
        raise UserError(f"{dataset.path}: the train split has fewer than two classes; a probe needs two or more")

    model = checkpoint.inference_model()
    body = transformer_body(checkpoint, model, COMMAND)
    torch.manual_seed(seed)
    control = build_model(body.config).eval().requires_grad_(False)
    result = ProbeResult(str(checkpoint_path), str(dataset_path), split, pooling, len(train.tokens),
                         len(scored.tokens), names,
                         float(np.mean(scored.labels == np.bincount(train.labels).argmax())))
    features = {}
    for name, network in (("", body), ("control_", control)):
        features[name] = (pooled_layers(network, train.tokens, checkpoint.specials, checkpoint.max_len, pooling),
                          pooled_layers(network, scored.tokens, checkpoint.specials, checkpoint.max_len, pooling))
    for layer in range(body.config.n_layer + 1):
        row: dict[str, Any] = {"layer": layer}
        for name, (train_x, eval_x) in features.items():
            accuracy, f1 = fit_probe(train_x[layer], train.labels, eval_x[layer], scored.labels)
            row[f"{name}accuracy"], row[f"{name}macro_f1"] = round(accuracy, 4), round(f1, 4)
        result.layers.append(row)
    return result


def markdown(result: ProbeResult) -> str:
    best = result.best()
    lines = [f"# Linear probes: {result.checkpoint}", "",
             f"Dataset {result.dataset}, fitted on train ({result.train_examples} examples), scored on "
             f"{result.split} ({result.eval_examples}); pooling {result.pooling}; logistic regression, C = {PROBE_C}. "
             f"Control: the same architecture with random weights. Majority class: {result.majority_accuracy:.4f}.",
             "", "| layer | accuracy | macro F1 | control accuracy | control macro F1 |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {row['layer']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | {row['control_accuracy']:.4f} | "
              f"{row['control_macro_f1']:.4f} |" for row in result.layers]
    lines += ["", f"Best layer: {best['layer']} ({best['accuracy']:.4f}, control {best['control_accuracy']:.4f})."]
    return "\n".join(lines) + "\n"


def plot(result: ProbeResult, path: Path) -> Path:
    from lmkit.plotting import require_matplotlib, save_figure

    Figure = require_matplotlib(COMMAND)
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = figure.add_subplot()
    layers = [row["layer"] for row in result.layers]
    ax.plot(layers, [row["accuracy"] for row in result.layers], marker="o", label="checkpoint")
    ax.plot(layers, [row["control_accuracy"] for row in result.layers], marker="s", linestyle="--",
            label="random weights (control)")
    ax.axhline(result.majority_accuracy, color="grey", linewidth=1, linestyle=":", label="majority class")
    ax.set_xticks(layers, ["emb" if layer == 0 else str(layer) for layer in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel(f"probe accuracy ({result.split})")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(f"linear probe per layer ({result.pooling} pooling)")
    ax.legend(loc="best", fontsize=8)
    return save_figure(figure, path)


def write(result: ProbeResult, out: Path) -> list[Path]:
    """probe.json, probe.md and probe.png in ``out``."""
    written = write_files(out, {"probe.json": json.dumps(result.__dict__, indent=1) + "\n",
                                "probe.md": markdown(result)})
    return [*written, plot(result, out / "probe.png")]
