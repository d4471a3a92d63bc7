"""Token attributions by integrated gradients (Sundararajan et al. 2017), for ``lmkit inspect attribution``.

The output explained is a log-probability: a classifier's log p(class | text), or a causal language
model's log p(next token | text). The path runs from a baseline input, where every token of the text is
replaced by the padding token's embedding (special tokens such as [CLS] and [SEP], and positions, are
kept), to the text itself:

    attribution_i = (x_i - x'_i) . integral_0^1 dF(x' + a (x - x'))/dx_i da

summed over the embedding dimensions of token i. (A zero embedding, the other common baseline, sits on the
singularity of the first RMSNorm/LayerNorm: the output then jumps within a tiny distance of the baseline
and no quadrature resolves it.) The integral is computed by Gauss-Legendre quadrature
(exact for polynomials of degree 2n - 1, and the network is smooth), so that the attributions sum to
F(x) - F(x'), the completeness axiom; the gap that is left is reported and checked. The embeddings enter
through a forward hook on the model's token embedding, so the model is the checkpoint's own, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lmkit.checkpoint import Checkpoint
from lmkit.errors import UserError
from lmkit.interpret import write_files
from lmkit.interpret.attention import model_inputs, token_label
from lmkit.tokenizer import Tokenizer

DEFAULT_STEPS = 32
CHUNK = 16           # interpolation points per forward pass
COMPLETENESS_TOLERANCE = 1e-3  # |sum of attributions - (F(x) - F(x'))| accepted before more steps are tried
MAX_STEPS = 512


@dataclass
class Attribution:
    tokens: list[str]             # pieces as labels
    ids: list[int]
    scores: list[float]           # per token; 0 for special tokens (not on the path)
    target: str                   # the class name, or the next token's piece
    output: str                   # what F is, in words
    value: float                  # F(x)
    baseline_value: float         # F(x')
    steps: int
    completeness_gap: float       # sum(scores) - (value - baseline_value)
    predicted: str                # the model's own top class or next token
    meta: dict = field(default_factory=dict)


def explained_output(checkpoint: Checkpoint) -> str:
    """What the attribution explains for this checkpoint; refuses kinds with no scalar output."""
    if checkpoint.head is not None:
        return "class"
    if checkpoint.qa is not None:
        raise UserError(f"{checkpoint.path}: a question-answering (span) model's output is a span of a context, not "
                        "one class or token; attribution works on classifiers and causal language models")
    if checkpoint.masked_lm:
        raise UserError(f"{checkpoint.path}: a masked language model (objective mlm) has no single output for a "
                        "text to explain; attribution works on classifiers (a class's log-probability) and causal "
                        "language models, gpt or lstm, pretrained or instruction-tuned (the next token's)")
    return "next token"


def _log_probs(checkpoint: Checkpoint, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """Log-probabilities (B, K) of the classes, or of the next token after idx (B, T)."""
    if checkpoint.head is not None:
        logits, _ = model(idx)  # one unpadded text: no attention mask
    else:
        logits = model(idx)[0][:, -1]  # (B, V)
    return torch.log_softmax(logits.float(), dim=-1)


def integrated_gradients(checkpoint: Checkpoint, model: nn.Module, ids: list[int], target: int,
                         special: list[bool], steps: int) -> tuple[np.ndarray, float, float]:
    """Attributions (T,) to ``target``'s log-probability, F(x) and F(x') with ``steps`` quadrature points."""
    body = model.backbone if checkpoint.head is not None else model
    idx = torch.tensor([ids])
    with torch.no_grad():
        embedded = body.tok_emb(idx)[0].float()  # (T, C)
        padding = body.tok_emb(torch.tensor([checkpoint.specials.pad]))[0].float()  # (C,)
    keep = torch.tensor(special, dtype=torch.bool)[:, None]  # (T, 1): specials stay as they are
    baseline = torch.where(keep, embedded, padding.expand_as(embedded))  # (T, C)
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]
    alphas, weights = torch.tensor((nodes + 1) / 2, dtype=torch.float32), torch.tensor(weights / 2)
    replacement: dict[str, torch.Tensor] = {}
    handle = body.tok_emb.register_forward_hook(lambda module, args, output: replacement["x"].to(output.dtype))
    try:
        grads = torch.zeros_like(embedded, dtype=torch.float64)
        for start in range(0, steps, CHUNK):
            a = alphas[start:start + CHUNK, None, None]  # (k, 1, 1)
            x = (baseline + a * (embedded - baseline)).requires_grad_(True)  # (k, T, C)
            replacement["x"] = x
            with torch.enable_grad():
                chosen = _log_probs(checkpoint, model, idx.expand(len(a), -1))[:, target]  # (k,)
                (gradient,) = torch.autograd.grad(chosen.sum(), x)
            grads += (weights[start:start + CHUNK, None, None] * gradient.double()).sum(dim=0)
        with torch.no_grad():
            values = []
            for point in (embedded, baseline):
                replacement["x"] = point[None]
                values.append(float(_log_probs(checkpoint, model, idx)[0, target]))
    finally:
        handle.remove()
    scores = ((embedded - baseline).double() * grads).sum(dim=-1).numpy()  # (T,)
    return scores, values[0], values[1]


def attribute(checkpoint: Checkpoint, model: nn.Module, text: str, target: str | None = None,
              steps: int = DEFAULT_STEPS) -> Attribution:
    """Integrated-gradients attributions of ``text``'s tokens for ``target`` (a class name, or a text whose
    first token is the next token to explain; None: the model's own prediction). Where ``steps`` points are
    not enough, they are doubled until the completeness gap is within tolerance (or MAX_STEPS)."""
    kind = explained_output(checkpoint)
    ids = model_inputs(checkpoint, text)
    tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
    with torch.no_grad():
        log_probs = _log_probs(checkpoint, model, torch.tensor([ids]))[0]
    predicted = int(log_probs.argmax())
    names = checkpoint.labels
    if target is None:
        chosen = predicted
    elif names is not None:
        if target not in names:
            raise UserError(f"--target {target}: not a label of {checkpoint.path} (labels: {', '.join(names)})")
        chosen = names.index(target)
    else:
        pieces = tokenizer.encode(target)
        if not pieces:
            raise UserError(f"--target {target!r}: gives no tokens; give the next word or token to explain")
        chosen = pieces[0]
    specials = checkpoint.specials
    fixed = {specials.cls, specials.sep} if checkpoint.model_config.arch == "bert" else set()
    special = [i in fixed for i in ids]
    if all(special):
        raise UserError("--text: has no tokens to attribute")
    while True:
        scores, value, baseline_value = integrated_gradients(checkpoint, model, ids, chosen, special, steps)
        gap = float(scores.sum() - (value - baseline_value))
        if abs(gap) <= COMPLETENESS_TOLERANCE or steps >= MAX_STEPS:
            break
        steps *= 2
    label = (lambda i: names[i]) if names is not None else (lambda i: token_label(tokenizer.id_to_piece(i)))
    output = f"log p({label(chosen)!s} | text)" + (" (next token)" if kind == "next token" else "")
    return Attribution(tokens=[token_label(tokenizer.id_to_piece(i)) for i in ids], ids=ids,
                       scores=[0.0 if s else float(v) for s, v in zip(special, scores)],
                       target=label(chosen), output=output, value=value, baseline_value=baseline_value, steps=steps,
                       completeness_gap=gap, predicted=label(predicted),
                       meta={"checkpoint": str(checkpoint.path),
                             "baseline": "the padding token's embedding for every text token"})


# -- pictures ----------------------------------------------------------------------------------------------
COMMAND = "lmkit inspect attribution"


def _rgb(score: float, scale: float) -> tuple[int, int, int]:
    """Red for evidence for the output, blue against; white at 0."""
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    fade = int(round(255 * (1 - 0.85 * strength)))
    return (255, fade, fade) if score >= 0 else (fade, fade, 255)


def _colour(score: float, scale: float) -> str:
    return "rgb({},{},{})".format(*_rgb(score, scale))


def html_page(result: Attribution) -> str:
    import html

    scale = max((abs(s) for s in result.scores), default=0.0)
    spans = []
    for token, score in zip(result.tokens, result.scores):
        shown = html.escape(token.replace("\u2423", " "))
        spans.append(f'<span class="t" style="background:{_colour(score, scale)}" '
                     f'title="{html.escape(token)}: {score:+.4f}">{shown}</span>')
    rows = "".join(f"<tr><td>{i}</td><td><code>{html.escape(t)}</code></td><td>{s:+.4f}</td></tr>"
                   for i, (t, s) in enumerate(zip(result.tokens, result.scores)))
    return _PAGE.format(title=html.escape(result.output), tokens="".join(spans), rows=rows,
                        value=result.value, baseline=result.baseline_value, total=sum(result.scores),
                        gap=result.completeness_gap, steps=result.steps, predicted=html.escape(result.predicted),
                        checkpoint=html.escape(result.meta.get("checkpoint", "")))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>attribution: {title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 60em; }}
  .text {{ font-family: monospace; font-size: 1.15em; line-height: 2.2em; border: 1px solid #ccc; padding: 0.6em; }}
  .t {{ padding: 0.15em 0.05em; border-radius: 2px; white-space: pre; }}
  .note {{ color: #666; font-size: 0.9em; }}
  table {{ border-collapse: collapse; margin-top: 1em; }} td {{ padding: 0.1em 0.8em; border-bottom: 1px solid #eee; }}
</style>
</head>
<body>
<h2>Integrated gradients: {title}</h2>
<div class="note">{checkpoint}. Model's prediction: <b>{predicted}</b>. Red tokens raise the output, blue ones lower
it (colour scaled to the largest |attribution|); hover for values. Baseline: every text token replaced by the padding
token's embedding (special tokens and positions kept).</div>
<p>F(text) = {value:.4f}, F(baseline) = {baseline:.4f}; the attributions sum to {total:.4f}
(completeness gap {gap:.2e}, {steps} quadrature points).</p>
<div class="text">{tokens}</div>
<table><tr><th>#</th><th>token</th><th>attribution</th></tr>{rows}</table>
</body>
</html>
"""


def write(result: Attribution, out: Path) -> list[Path]:
    """attribution.html, attribution.json and attribution.png in ``out``."""
    import json

    written = write_files(out, {"attribution.html": html_page(result),
                                "attribution.json": json.dumps(result.__dict__, indent=1, ensure_ascii=False) + "\n"})
    return [*written, png(result, out / "attribution.png")]


def png(result: Attribution, path: Path) -> Path:
    from lmkit.plotting import require_matplotlib, save_figure

    Figure = require_matplotlib(COMMAND)
    n = len(result.tokens)
    figure = Figure(figsize=(min(max(4.0, 0.32 * n + 1.5), 30.0), 3.6), layout="constrained")
    ax = figure.add_subplot()
    scale = max((abs(s) for s in result.scores), default=0.0)
    ax.bar(range(n), result.scores, color=[tuple(c / 255 for c in _rgb(s, scale)) for s in result.scores],
           edgecolor="#555", linewidth=0.5)
    ax.axhline(0.0, color="#555", linewidth=0.8)
    ax.set_xticks(range(n), result.tokens, rotation=90, fontsize=max(5.0, min(9.0, 10.0 - n / 12)))
    ax.set_ylabel("attribution")
    ax.set_title(f"{result.output}: {result.value:.3f} (baseline {result.baseline_value:.3f})", fontsize=10)
    return save_figure(figure, path)
