"""Attention maps as pictures: a PNG heatmap per layer and head, a PNG grid of a layer's heads, and one
self-contained HTML page (weights as inline JSON, drawn by inline JavaScript: no network, no files
beside it) with controls to choose the layer and head.
"""

from __future__ import annotations

import html
import json
import os
import warnings
from pathlib import Path

from lmkit.errors import UserError
from lmkit.interpret.attention import AttentionMaps
from lmkit.plotting import require_matplotlib, save_figure

COMMAND = "lmkit inspect attention"
_GRID_COLUMNS = 4


def _label_size(n_tokens: int) -> float:
    return max(5.0, min(9.0, 10.0 - n_tokens / 12))


def colour_max(maps: AttentionMaps, matrix) -> float:
    """The weight drawn darkest. A causal model's first query sees only itself (weight 1), which would
    wash out every other row: it is left out of the scale."""
    rows = matrix[1:] if maps.causal and len(matrix) > 1 else matrix
    return max(float(rows.max()), 1e-6)


def _draw(ax, maps: AttentionMaps, layer: int, head: int, labels: bool) -> object:
    import numpy as np

    matrix = maps.weights[layer, head].numpy()  # (T, T)
    T = matrix.shape[0]
    shown = np.ma.masked_where(np.triu(np.ones((T, T), dtype=bool), 1), matrix) if maps.causal else matrix
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#e6e6e6")  # grey: keys a causal query cannot see
    image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=colour_max(maps, matrix), interpolation="nearest")
    if labels:
        size = _label_size(T)
        ax.set_xticks(range(T), maps.tokens, rotation=90, fontsize=size)
        ax.set_yticks(range(T), maps.tokens, fontsize=size)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def head_png(maps: AttentionMaps, layer: int, head: int, path: Path) -> Path:
    """``layer{L}-head{H}.png``: one head's weights, tokens on both axes, with a colour bar."""
    Figure = require_matplotlib(COMMAND)
    T = len(maps.tokens)
    side = min(max(4.5, 1.6 + 0.24 * T), 26.0)  # inches: room for every label
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    ax = figure.add_subplot()
    image = _draw(ax, maps, layer, head, labels=True)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    ax.set_title(f"layer {layer}, head {head}")
    clipped = float(maps.weights[layer, head].max()) > image.norm.vmax  # the first row of a causal model
    figure.colorbar(image, ax=ax, shrink=0.8, label="attention weight", extend="max" if clipped else "neither")
    return _save(figure, path)


def layer_png(maps: AttentionMaps, layer: int, heads: list[int], path: Path) -> Path:
    """``layer{L}.png``: every chosen head of one layer side by side (labels when they stay readable)."""
    Figure = require_matplotlib(COMMAND)
    T = len(maps.tokens)
    columns = min(_GRID_COLUMNS, len(heads))
    rows = -(-len(heads) // columns)
    cell = min(max(3.0, 0.12 * T + 1.5), 8.0)
    figure = Figure(figsize=(cell * columns, cell * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten()
    for ax, head in zip(axes, heads):
        _draw(ax, maps, layer, head, labels=T <= 24)
        ax.set_title(f"head {head}", fontsize=10)
    for ax in axes[len(heads):]:
        ax.set_visible(False)
    figure.suptitle(f"layer {layer}: attention of each head (rows: queries, columns: keys)", fontsize=11)
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    with warnings.catch_warnings():  # a CJK or emoji token has no glyph in the default font: a box is fine
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        return save_figure(figure, path)


def write_html(maps: AttentionMaps, layers: list[int], heads: list[int], path: Path, title: str) -> Path:
    """``attention.html``: the chosen layers' and heads' weights, browsable, with no network access."""
    data = {
        "tokens": maps.tokens,
        "layers": layers,
        "heads": heads,
        "causal": maps.causal,
        # weights[li][hi] is the (T, T) matrix of layers[li], heads[hi]; 4 decimals keep the page small
        "weights": [[[[round(float(w), 4) for w in row] for row in maps.weights[layer, head].tolist()]
                     for head in heads] for layer in layers],
    }
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # no "</script>" inside the script
    page = _PAGE.replace("__TITLE__", html.escape(title)).replace("__DATA__", payload)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>attention: __TITLE__</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
  header { margin-bottom: 1em; }
  .controls label { margin-right: 1.5em; }
  #hover { font-family: monospace; min-height: 1.4em; margin: 0.6em 0; }
  canvas { border: 1px solid #ccc; }
  .note { color: #666; font-size: 0.9em; }
</style>
</head>
<body>
<header>
  <h2>Attention weights</h2>
  <div class="note">__TITLE__</div>
  <div class="note">Rows are queries (the token attending), columns are keys (the token attended to); each row
  sums to 1. Colour is scaled to the largest weight of the matrix shown (a causal model's first row, always 1,
  excepted); grey cells are keys a causal model cannot see. Hover over a cell for its weight.</div>
</header>
<div class="controls">
  <label>layer <select id="layer"></select></label>
  <label>head <select id="head"></select></label>
  <span class="note">(arrow keys: &larr;/&rarr; head, &uarr;/&darr; layer)</span>
</div>
<div id="hover">&nbsp;</div>
<canvas id="map"></canvas>
<script>
const DATA = __DATA__;
const layerSelect = document.getElementById("layer");
const headSelect = document.getElementById("head");
const canvas = document.getElementById("map");
const hover = document.getElementById("hover");
const T = DATA.tokens.length;
const cell = Math.max(8, Math.min(28, Math.floor(640 / T)));
const font = Math.max(8, Math.min(13, cell - 2));
let margin = 0;

DATA.layers.forEach((layer, i) => layerSelect.add(new Option("layer " + layer, i)));
headSelect.add(new Option("mean of heads", -1));
DATA.heads.forEach((head, i) => headSelect.add(new Option("head " + head, i)));
headSelect.value = 0;

function matrix() {
  const layer = DATA.weights[Number(layerSelect.value)];
  const head = Number(headSelect.value);
  if (head >= 0) return layer[head];
  return layer[0].map((row, q) => row.map((_, k) => layer.reduce((sum, m) => sum + m[q][k], 0) / layer.length));
}

function colour(value, max) {  // white to dark blue
  const t = max > 0 ? value / max : 0;
  const r = Math.round(255 - t * 247), g = Math.round(255 - t * 207), b = Math.round(255 - t * 148);
  return "rgb(" + r + "," + g + "," + b + ")";
}

function draw() {
  const m = matrix();
  const ctx = canvas.getContext("2d");
  ctx.font = font + "px monospace";
  margin = 12 + Math.max(...DATA.tokens.map(t => ctx.measureText(t).width));
  canvas.width = margin + T * cell + 4;
  canvas.height = margin + T * cell + 4;
  ctx.font = font + "px monospace";
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  // A causal model's first query sees only itself (weight 1): left out of the scale, or it washes out the rest.
  const scaled = DATA.causal && T > 1 ? m.slice(1) : m;
  const max = Math.max(...scaled.map(row => Math.max(...row)));
  for (let q = 0; q < T; q++) {
    for (let k = 0; k < T; k++) {
      ctx.fillStyle = DATA.causal && k > q ? "#e6e6e6" : colour(m[q][k], max);
      ctx.fillRect(margin + k * cell, margin + q * cell, cell - 1, cell - 1);
    }
  }
  ctx.fillStyle = "#222";
  ctx.textBaseline = "middle";
  ctx.textAlign = "right";
  DATA.tokens.forEach((t, i) => ctx.fillText(t, margin - 6, margin + i * cell + cell / 2));
  ctx.save();
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = "left";
  DATA.tokens.forEach((t, i) => ctx.fillText(t, -margin + 6, margin + i * cell + cell / 2));
  ctx.restore();
}

canvas.addEventListener("mousemove", event => {
  const box = canvas.getBoundingClientRect();
  const k = Math.floor((event.clientX - box.left - margin) / cell);
  const q = Math.floor((event.clientY - box.top - margin) / cell);
  if (q < 0 || k < 0 || q >= T || k >= T) { hover.innerHTML = "&nbsp;"; return; }
  const value = matrix()[q][k];
  hover.textContent = "query " + q + " " + JSON.stringify(DATA.tokens[q]) + "  ->  key " + k + " " +
    JSON.stringify(DATA.tokens[k]) + ":  " + value.toFixed(4);
});
document.addEventListener("keydown", event => {
  const step = {ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0]}[event.key];
  if (!step) return;
  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  layerSelect.value = clamp(Number(layerSelect.value) + step[0], 0, DATA.layers.length - 1);
  headSelect.value = clamp(Number(headSelect.value) + step[1], -1, DATA.heads.length - 1);
  event.preventDefault();
  draw();
});
layerSelect.addEventListener("change", draw);
headSelect.addEventListener("change", draw);
draw();
</script>
</body>
</html>
"""


# -- the command's work --------------------------------------------------------------------------------

def write_attention_maps(checkpoint_path: str | Path, text: str, out: str | Path, layers: list[int] | None = None,
                         heads: list[int] | None = None) -> list[Path]:
    """Every picture of ``lmkit inspect attention`` into the directory ``out``; returns the files written
    (the HTML page first)."""
    from lmkit.checkpoint import read_checkpoint
    from lmkit.interpret.attention import attention_maps

    require_matplotlib(COMMAND)  # before any compute
    checkpoint = read_checkpoint(checkpoint_path)
    config = checkpoint.model_config
    if config.arch != "lstm":
        layers = _chosen(layers, config.n_layer, "--layers", "layer")
        heads = _chosen(heads, config.n_head, "--heads", "head")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    model = checkpoint.inference_model()
    maps = attention_maps(checkpoint, model, text)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{checkpoint.path} ({config.arch}, {config.n_layer} layers x {config.n_head} heads), " \
            f"{len(maps.tokens)} tokens: {text[:80]}{'...' if len(text) > 80 else ''}"
    written = [write_html(maps, layers, heads, out / "attention.html", title)]
    for layer in layers:
        written.append(layer_png(maps, layer, heads, out / f"layer{layer}.png"))
        written += [head_png(maps, layer, head, out / f"layer{layer}-head{head}.png") for head in heads]
    return written


def _chosen(indices: list[int] | None, count: int, flag: str, what: str) -> list[int]:
    if not indices:
        return list(range(count))
    wrong = [index for index in indices if not 0 <= index < count]
    if wrong:
        raise UserError(f"{flag}: no {what} {', '.join(map(str, wrong))} (the model has {count}: 0-{count - 1})")
    return list(dict.fromkeys(indices))
