"""Which feed-forward neurons fire on which tokens of a text (``lmkit inspect activations``).

A neuron is one of the d_ff hidden units of a block's feed-forward layer: the input of its ``down``
projection, i.e. gelu(up x) for a GELU MLP and silu(gate x) * (up x) for SwiGLU, captured by a forward
pre-hook on ``down`` during one ordinary forward pass. Per layer it reports the distribution of those
activations over the text (mean, standard deviation, the share above zero, the largest), and the neurons
with the highest activation on any token, each with the tokens where it fires most.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmkit.checkpoint import Checkpoint
from lmkit.interpret import write_files
from lmkit.interpret.attention import model_inputs, token_label
from lmkit.interpret.states import transformer_body
from lmkit.models.layers import distinct_modules
from lmkit.tokenizer import Tokenizer

COMMAND = "lmkit inspect activations"
TOKENS_PER_NEURON = 3


@dataclass
class Activations:
    tokens: list[str]
    layers: list[dict[str, Any]] = field(default_factory=list)  # stats and "neurons": [{neuron, values, top}]


def neuron_activations(body: nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """(T, d_ff) activations of every block's feed-forward neurons on one unpadded sequence."""
    captured: list[torch.Tensor] = []
    handles = [block.mlp.down.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
               for block in distinct_modules(body.blocks)]  # a shared block: once, called per layer
    try:
        with torch.no_grad():
            body.encode(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return [a[0].float() for a in captured]


def activations(checkpoint: Checkpoint, model: nn.Module, text: str, top: int = 8) -> Activations:
    body = transformer_body(checkpoint, model, COMMAND)
    ids = model_inputs(checkpoint, text)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    tokens = [token_label(tokenizer.id_to_piece(i)) for i in ids]
    result = Activations(tokens)
    for layer, values in enumerate(neuron_activations(body, ids)):  # (T, d_ff)
        peak, where = values.max(dim=0)  # (d_ff,) each neuron's largest activation and its token
        chosen = torch.argsort(peak, descending=True)[:top]
        neurons = []
        for neuron in chosen.tolist():
            column = values[:, neuron]
            best = torch.argsort(column, descending=True)[:TOKENS_PER_NEURON].tolist()
            neurons.append({"neuron": neuron, "max": round(float(peak[neuron]), 4),
                            "top_tokens": [[tokens[t], t, round(float(column[t]), 4)] for t in best],
                            "values": [round(float(v), 4) for v in column]})
        result.layers.append({"layer": layer + 1, "d_ff": values.shape[1], "mean": round(float(values.mean()), 4),
                              "std": round(float(values.std()), 4), "max": round(float(values.max()), 4),
                              "share_positive": round(float((values > 0).float().mean()), 4), "neurons": neurons})
    return result


def markdown(result: Activations, source: str) -> str:
    lines = [f"# Feed-forward activations: {source}", "",
             "Text: " + " ".join(f"`{t}`" for t in result.tokens), "",
             "| layer | neurons | mean | std | max | share > 0 |", "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['layer']} | {r['d_ff']} | {r['mean']:.4f} | {r['std']:.4f} | {r['max']:.4f} | "
              f"{r['share_positive']:.3f} |" for r in result.layers]
    for row in result.layers:
        lines += ["", f"## Layer {row['layer']}: the neurons that fire most", "",
                  "| neuron | max | fires most on |", "| ---: | ---: | --- |"]
        lines += [f"| {n['neuron']} | {n['max']:.3f} | "
                  + ", ".join(f"`{t}` (#{i}, {v:.2f})" for t, i, v in n["top_tokens"]) + " |" for n in row["neurons"]]
    return "\n".join(lines) + "\n"


def html_page(result: Activations, source: str) -> str:
    sections = []
    for row in result.layers:
        lines = []
        for neuron in row["neurons"]:
            scale = max(neuron["max"], 1e-6)
            spans = "".join(
                f'<span class="t" style="background:rgba(230,97,1,{max(v, 0.0) / scale:.3f})" '
                f'title="{html.escape(t)}: {v:.3f}">{html.escape(t.replace(chr(0x2423), " "))}</span>'
                for t, v in zip(result.tokens, neuron["values"]))
            lines.append(f'<div class="n"><span class="id">#{neuron["neuron"]} (max {neuron["max"]:.2f})</span>'
                         f'{spans}</div>')
        sections.append(f"<h3>Layer {row['layer']}</h3><p class=\"note\">mean {row['mean']:.3f}, std "
                        f"{row['std']:.3f}, {100 * row['share_positive']:.1f}% above zero, max {row['max']:.3f}</p>"
                        + "".join(lines))
    return _PAGE.format(source=html.escape(source), sections="".join(sections))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>activations: {source}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
  .n {{ font-family: monospace; margin: 0.25em 0; white-space: nowrap; }}
  .id {{ display: inline-block; width: 11em; color: #555; }}
  .t {{ padding: 0.1em 0.05em; white-space: pre; }}
  .note {{ color: #666; font-size: 0.9em; }}
</style>
</head>
<body>
<h2>Feed-forward neurons that fire most on this text</h2>
<div class="note">{source}. Each row is one neuron (the input of the block's down projection); the text is
shaded by that neuron's activation on each token, scaled to its largest (negative values are not shaded).
Hover for values.</div>
{sections}
</body>
</html>
"""


def write(result: Activations, source: str, out: Path) -> list[Path]:
    """activations.html, activations.md and activations.json in ``out``."""
    return write_files(out, {"activations.html": html_page(result, source), "activations.md": markdown(result, source),
                             "activations.json": json.dumps(result.__dict__, indent=1, ensure_ascii=False) + "\n"})
