"""lmkit inspect activations: the neurons are the feed-forward hidden units recomputed here from the MLP's
input, the strongest are listed with the tokens they fire on, and an LSTM is refused."""

import json

import pytest
import torch
import torch.nn.functional as F

from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.interpret.activations import activations, neuron_activations
from lmkit.models import build_model
from tests.conftest import invoke_lmkit
from tests.models.conftest import tiny_config


@pytest.mark.parametrize("arch", ["gpt", "bert"])
def test_neurons_are_the_feed_forward_hidden_units(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch)).eval()
    inputs = []
    handles = [block.mlp.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for block in model.blocks]
    got = neuron_activations(model, [5, 6, 7, 8, 9])
    for handle in handles:
        handle.remove()
    for block, x, values in zip(model.blocks, inputs, got, strict=True):
        with torch.no_grad():
            mlp = block.mlp
            expected = F.silu(mlp.gate(x)) * mlp.up(x) if arch == "gpt" else F.gelu(mlp.up(x))
        assert values.shape == (5, mlp.down.in_features)
        assert torch.allclose(values, expected[0], atol=1e-6)


def test_strongest_neurons_and_their_tokens(gpt, lstm, tmp_path):
    checkpoint = read_checkpoint(gpt)
    result = activations(checkpoint, checkpoint.inference_model(), "The for statement iterates", top=5)
    assert [row["layer"] for row in result.layers] == [1, 2]
    for row in result.layers:
        maxima = [n["max"] for n in row["neurons"]]
        assert len(maxima) == 5 and maxima == sorted(maxima, reverse=True) and maxima[0] == row["max"]
        for neuron in row["neurons"]:
            token, position, value = neuron["top_tokens"][0]
            assert value == max(neuron["values"]) == neuron["max"] and result.tokens[position] == token
    out = tmp_path / "neurons"
    printed = invoke_lmkit("inspect", "activations", str(gpt), "The <for> statement", "--out", str(out), "--top", "3",
                           check=True)
    assert printed.stdout.startswith(f"{out / 'activations.html'}: 2 layers, ")
    saved = json.loads((out / "activations.json").read_text())
    assert [len(row["neurons"]) for row in saved["layers"]] == [3, 3]
    assert "&lt;" in (out / "activations.html").read_text() and "| neuron |" in (out / "activations.md").read_text()
    lstm_checkpoint = read_checkpoint(lstm)
    with pytest.raises(UserError, match="does not expose its inner layers; lmkit inspect activations needs a gpt"):
        activations(lstm_checkpoint, lstm_checkpoint.inference_model(), "text")
