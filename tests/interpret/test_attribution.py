"""Integrated gradients (lmkit inspect attribution): completeness on every checkpoint kind that has an
output to explain, agreement with a plain Riemann sum written here, refusals, and the written pages."""

import json

import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.interpret.attribution import attribute, integrated_gradients
from tests.conftest import invoke_lmkit
from tests.interop.conftest import write_finetuned

TEXT = "The for statement iterates over the items"


@pytest.fixture(scope="module")
def checkpoints(gpt, bert, lstm, tmp_path_factory):
    root = tmp_path_factory.mktemp("attribution")
    return {"gpt": gpt, "lstm": lstm,
            "gpt-classifier": write_finetuned(gpt, root / "gpt-clf", labels=["a", "b", "c"], pooling="mean"),
            "bert-classifier": write_finetuned(bert, root / "bert-clf", labels=["x", "y"], pooling="cls")}


@pytest.mark.parametrize("kind", ["gpt", "lstm", "gpt-classifier", "bert-classifier"])
def test_attributions_sum_to_the_change_of_the_output(checkpoints, kind):
    checkpoint = read_checkpoint(checkpoints[kind])
    model = checkpoint.inference_model()
    result = attribute(checkpoint, model, TEXT)
    assert abs(sum(result.scores) - (result.value - result.baseline_value)) <= 1e-3
    assert abs(result.completeness_gap) <= 1e-3
    assert result.target == result.predicted  # no --target: the model's own prediction
    with torch.no_grad():  # F(x) is the model's own log-probability, read without the hook
        idx = torch.tensor([result.ids])
        if checkpoint.head is not None:
            expected = torch.log_softmax(model(idx)[0], -1)[0, checkpoint.labels.index(result.target)]
        else:
            expected = torch.log_softmax(model(idx)[0][0, -1], -1).max()
    assert result.value == pytest.approx(float(expected), abs=1e-5)
    if kind == "bert-classifier":  # [CLS] and [SEP] are not on the path
        assert result.tokens[0] == "[CLS]" and result.scores[0] == 0.0 and result.scores[-1] == 0.0


def test_quadrature_agrees_with_a_riemann_sum(checkpoints):
    checkpoint = read_checkpoint(checkpoints["gpt-classifier"])
    model = checkpoint.inference_model()
    result = attribute(checkpoint, model, TEXT, target="b")
    # The same integral by 2,000 midpoints, computed here through inputs built by hand.
    body, ids = model.backbone, torch.tensor([result.ids])
    with torch.no_grad():
        x = body.tok_emb(ids)[0]
        base = body.tok_emb(torch.tensor([checkpoint.specials.pad]))[0].expand_as(x)
    total = torch.zeros_like(x, dtype=torch.float64)
    n = 2000
    for start in range(0, n, 250):
        alphas = (torch.arange(start, start + 250, dtype=torch.float32) + 0.5) / n
        point = (base + alphas[:, None, None] * (x - base)).requires_grad_(True)
        handle = body.tok_emb.register_forward_hook(lambda m, a, out, point=point: point)
        try:
            log_p = torch.log_softmax(model(ids.expand(250, -1))[0], -1)[:, 1]
        finally:
            handle.remove()
        total += torch.autograd.grad(log_p.sum(), point)[0].double().sum(0) / n
    reference = ((x - base).double() * total).sum(-1)
    assert torch.allclose(torch.tensor(result.scores, dtype=torch.float64), reference, atol=2e-4)
    scores, value, baseline_value = integrated_gradients(checkpoint, model, result.ids, 1,
                                                         [False] * len(result.ids), 2)
    assert value == pytest.approx(result.value) and scores.shape == (len(result.ids),)


def test_targets_and_refusals(checkpoints, bert):
    classifier = read_checkpoint(checkpoints["gpt-classifier"])
    model = classifier.inference_model()
    assert attribute(classifier, model, TEXT, target="c").target == "c"
    with pytest.raises(UserError, match=r"--target z: not a label of .* \(labels: a, b, c\)"):
        attribute(classifier, model, TEXT, target="z")
    lm = read_checkpoint(checkpoints["gpt"])
    result = attribute(lm, lm.inference_model(), TEXT, target=" over")
    assert result.output.startswith("log p(") and result.output.endswith("(next token)")
    masked = read_checkpoint(bert)
    with pytest.raises(UserError, match="objective mlm.* attribution works on classifiers"):
        attribute(masked, masked.inference_model(), TEXT)


def test_cli_writes_page_picture_and_numbers(checkpoints, bert, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "why"
    result = invoke_lmkit("inspect", "attribution", str(checkpoints["gpt-classifier"]),
                          "A </div><script>x</script> text", "--out", str(out), "--target", "a", check=True)
    assert result.stdout.startswith(f"{out / 'attribution.html'}: log p(a | text) = ")
    saved = json.loads((out / "attribution.json").read_text())
    assert abs(saved["completeness_gap"]) <= 1e-3 and saved["target"] == "a"
    page = (out / "attribution.html").read_text()
    assert "<script" not in page and "&lt;" in page  # the text is escaped; the page needs no script
    assert "http" not in page.replace("http-equiv", "")
    assert (out / "attribution.png").read_bytes()[:4] == b"\x89PNG"
    refused = invoke_lmkit("inspect", "attribution", str(bert), "text", "--out", str(tmp_path / "no"))
    assert refused.returncode == 1 and "has no single output for a text to explain" in refused.stderr
    assert not (tmp_path / "no").exists()
