"""``lmkit inspect``: look inside a trained model; ``lmkit inspect attention`` draws its attention maps."""

from __future__ import annotations

from pathlib import Path

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
