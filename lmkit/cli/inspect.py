"""``lmkit inspect``: look inside a trained model; ``lmkit inspect attention`` draws its attention maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from lmkit.cli._util import app, handle_errors
from lmkit.errors import UserError
from lmkit.progress import reporter

inspect_app = typer.Typer(help="Look inside a trained model: attention maps, linear probes per layer, hidden "
                          "states as Arrow, token attributions, neuron activations.", no_args_is_help=True,
                          context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(inspect_app, name="inspect")


def _indices(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated indices such as 0,2, got {text!r}") from None


@inspect_app.command("attention", no_args_is_help=True)
@handle_errors
def attention(
    checkpoint: Path = typer.Argument(..., help="Checkpoint of a gpt or bert model (a classifier: its body)."),
    text: str = typer.Option(..., "--text", "-t", help="Text to run through the model (as the model reads it: "
                             "a bert gets [CLS] ... [SEP], a classifier its input layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for attention.html, layer{L}.png and "
                             "layer{L}-head{H}.png (created; files of the same names are replaced)."),
    layers: str = typer.Option("", "--layers", help="Layers to draw, comma-separated (default: all).",
                               show_default=False),
    heads: str = typer.Option("", "--heads", help="Heads to draw, comma-separated (default: all).",
                              show_default=False),
) -> None:
    """Draw the attention weights of every layer and head on a text: PNG heatmaps with the tokens on both
    axes, and one self-contained HTML page (no network) to browse layers and heads.

    Example: lmkit inspect attention runs/gpt/final --text "The for statement" --out attention
    """
    from lmkit.interpret.render import write_attention_maps  # torch loads only for commands that need it

    written = write_attention_maps(checkpoint, text, out, _indices(layers, "--layers"), _indices(heads, "--heads"))
    pngs = [path for path in written if path.suffix == ".png"]
    reporter.out.print(f"{written[0]}: attention browser; {len(pngs)} PNG heatmap(s) in {out}", markup=False,
                       soft_wrap=True)


@inspect_app.command("probe", no_args_is_help=True)
@handle_errors
def probe(
    checkpoint: Path = typer.Argument(..., help="Checkpoint of a gpt or bert model (a classifier: its body)."),
    dataset: Path = typer.Argument(..., help="Labeled dataset artifact, tokenized with the checkpoint's tokenizer."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for probe.json, probe.md and probe.png "
                             "(created; files of the same names are replaced)."),
    split: str = typer.Option("auto", "--split", help="Split to score the probes on: validation, test, or auto "
                              "(validation if the dataset has one, else test). They are fitted on train."),
    pooling: str = typer.Option("auto", "--pooling", help="How a text's states become one vector: mean, last "
                                "(gpt), cls (bert), or auto (a classifier's own pooling, else mean)."),
    max_train_examples: int = typer.Option(5000, "--max-train-examples", min=0, help="Fit on a seeded random "
                                           "subset of train this large (0: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset and of the random-weight control."),
) -> None:
    """Fit a linear probe on every layer's frozen hidden states and plot accuracy against layer, beside the
    same probe on a random-weight model of the same architecture (the control).

    Example: lmkit inspect probe runs/gpt/final data/labeled --out probe
    """
    from lmkit.interpret.probe import run_probe, write

    reporter.info("fitting a probe on every layer of the checkpoint and of a random-weight control")
    result = run_probe(checkpoint, dataset, split, pooling, max_train_examples, seed)
    written = write(result, out)
    best = result.best()
    reporter.out.print(f"{written[1]}: best layer {best['layer']} of {len(result.layers) - 1}, {result.split} "
                       f"accuracy {best['accuracy']:.4f} (random-weight control {best['control_accuracy']:.4f}, "
                       f"majority class {result.majority_accuracy:.4f})", markup=False, soft_wrap=True)


@inspect_app.command("attribution", no_args_is_help=True)
@handle_errors
def attribution(
    checkpoint: Path = typer.Argument(..., help="A classifier, or a causal language model (gpt or lstm)."),
    text: str = typer.Argument(..., help="The text whose tokens are attributed."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for attribution.html, attribution.png and "
                             "attribution.json (created; files of the same names are replaced)."),
    target: Optional[str] = typer.Option(None, "--target", help="What to explain: a class name of a classifier, "
                                         "or the next word of a language model (its first token). Default: the "
                                         "model's own prediction.", show_default=False),
    steps: int = typer.Option(32, "--steps", min=2, max=512, help="Quadrature points of the path integral "
                              "(doubled until the attributions sum to the output's change within 1e-3)."),
) -> None:
    """Explain one prediction by integrated gradients: how much each token moved the log-probability of a
    class (a classifier) or of the next token (a causal LM), from a baseline where every token of the text
    is the padding token. The attributions sum to the output's change (completeness); the gap is shown.

    Example: lmkit inspect attribution runs/clf/final "Return the sum of two numbers." --out why
    """
    from lmkit.checkpoint import read_checkpoint
    from lmkit.interpret.attribution import COMMAND, attribute, explained_output, write
    from lmkit.plotting import require_matplotlib

    require_matplotlib(COMMAND)
    loaded = read_checkpoint(checkpoint)
    explained_output(loaded)  # refuses a masked LM before the model is built
    result = attribute(loaded, loaded.inference_model(), text, target, steps)
    written = write(result, out)
    top = sorted(zip(result.scores, result.tokens), reverse=True)[:3]
    reporter.out.print(f"{written[0]}: {result.output} = {result.value:.4f} (baseline {result.baseline_value:.4f}); "
                       f"top tokens {', '.join(f'{t} {s:+.3f}' for s, t in top)}; completeness gap "
                       f"{result.completeness_gap:.1e}", markup=False, soft_wrap=True)


@inspect_app.command("embed", no_args_is_help=True)
@handle_errors
def embed(
    checkpoint: Path = typer.Argument(..., help="Checkpoint of a gpt or bert model (a classifier: its body)."),
    dataset: Path = typer.Argument(..., help="Dataset artifact tokenized with the checkpoint's tokenizer."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory of the embeddings artifact (embeddings.arrow "
                             "and its manifest)."),
    split: str = typer.Option("all", "--split", help="Splits to embed, comma-separated, or all."),
    layers: str = typer.Option("-1", "--layers", help="Layers to write, comma-separated: 0 is the embeddings, "
                               "-1 the final layer (what a head reads)."),
    pooling: str = typer.Option("auto", "--pooling", help="One vector per document: mean, last (gpt), cls "
                                "(bert), auto (a classifier's own pooling, else mean); or none: every "
                                "position's state."),
    force: bool = typer.Option(False, "--force", help="Replace an existing artifact at --out."),
) -> None:
    """Write a dataset's hidden states as an Arrow file, one row per document (split, id, label, n_tokens,
    and a column per layer), for your own analysis: read it with pyarrow, pandas or polars. Memory stays
    bounded: documents are read and written a batch at a time.

    Example: lmkit inspect embed runs/gpt/final data/labeled --layers 0,-1 --out vectors
    """
    from lmkit.interpret.embed import FILE, write_embeddings

    artifact = write_embeddings(checkpoint, dataset, out, split, layers, pooling, force)
    stats = artifact.stats
    counts = ", ".join(f"{name} {count}" for name, count in stats["documents"].items())
    reporter.out.print(f"{artifact.path / FILE}: {counts} documents; layers {', '.join(map(str, stats['layers']))} "
                       f"({'every position' if stats['pooling'] == 'none' else stats['pooling'] + ' pooling'}, "
                       f"{stats['d_model']} dimensions)", markup=False, soft_wrap=True)


@inspect_app.command("activations", no_args_is_help=True)
@handle_errors
def activations(
    checkpoint: Path = typer.Argument(..., help="Checkpoint of a gpt or bert model (a classifier: its body)."),
    text: str = typer.Argument(..., help="The text to run through the model (in its input layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for activations.html, activations.md and "
                             "activations.json (created; files of the same names are replaced)."),
    top: int = typer.Option(8, "--top", min=1, help="Neurons shown per layer: those with the highest activation."),
) -> None:
    """Show which feed-forward neurons fire on which tokens: per layer, the activations' mean, spread and
    share above zero, and the neurons that fire most, with the tokens they fire on (a page that shades
    the text by each neuron, and a Markdown table).

    Example: lmkit inspect activations runs/gpt/final "The for statement" --out neurons
    """
    from lmkit.checkpoint import read_checkpoint
    from lmkit.interpret.activations import activations as find
    from lmkit.interpret.activations import write

    loaded = read_checkpoint(checkpoint)
    result = find(loaded, loaded.inference_model(), text, top)
    written = write(result, str(checkpoint), out)
    busiest = max(result.layers, key=lambda row: row["max"])
    first = busiest["neurons"][0]
    reporter.out.print(f"{written[0]}: {len(result.layers)} layers, {busiest['d_ff']} neurons each; the strongest, "
                       f"layer {busiest['layer']} neuron {first['neuron']}, fires most on "
                       f"{first['top_tokens'][0][0]} ({first['max']:.2f})", markup=False, soft_wrap=True)
