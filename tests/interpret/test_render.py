"""The pictures of `lmkit inspect attention`: valid PNGs of the expected layout, and an HTML page that
needs no network and whose script draws the chosen matrix (run under node when it is installed)."""

import json
import shutil
import subprocess
import sys

import numpy
import pytest
import torch

from lmkit.checkpoint import read_checkpoint
from lmkit.errors import UserError
from lmkit.interpret.render import write_attention_maps

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("matplotlib")
TEXT = "The for statement is used"


def page_data(html_path):
    page = html_path.read_text(encoding="utf-8")
    start = page.index("const DATA = ") + len("const DATA = ")
    return page, json.loads(page[start:page.index(";\n", start)].replace("<\\/", "</"))


def test_writes_every_picture_and_a_self_contained_page(gpt, tmp_path):
    out = tmp_path / "maps"
    written = write_attention_maps(gpt, TEXT, out)
    names = sorted(p.name for p in written)
    assert names == sorted(["attention.html", "layer0.png", "layer1.png"] +
                           [f"layer{layer}-head{head}.png" for layer in (0, 1) for head in (0, 1)])
    for path in written[1:]:
        with Image.open(path) as image:
            image.verify()  # a complete, valid PNG
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 300
            assert numpy.asarray(image.convert("L"), dtype=float).std() > 10  # drawn, not blank
    with Image.open(out / "layer0-head1.png") as head, Image.open(out / "layer0.png") as grid:
        assert grid.width > head.width * 0.9  # two heads side by side

    page, data = page_data(out / "attention.html")
    assert "http://" not in page and "https://" not in page and " src=" not in page and "<link" not in page
    checkpoint = read_checkpoint(gpt)
    model = checkpoint.build_model().eval()
    from lmkit.interpret.attention import attention_maps

    maps = attention_maps(checkpoint, model, TEXT)
    assert data["tokens"] == maps.tokens and data["layers"] == [0, 1] and data["heads"] == [0, 1]
    torch.testing.assert_close(torch.tensor(data["weights"]), maps.weights, atol=1e-4, rtol=0)


def test_chosen_layers_and_heads_and_bad_choices(gpt, tmp_path):
    written = write_attention_maps(gpt, TEXT, tmp_path / "one", layers=[1], heads=[0])
    assert sorted(p.name for p in written) == ["attention.html", "layer1-head0.png", "layer1.png"]
    with pytest.raises(UserError, match=r"--layers: no layer 2 \(the model has 2: 0-1\)"):
        write_attention_maps(gpt, TEXT, tmp_path / "bad", layers=[2])
    with pytest.raises(UserError, match="--heads: no head 5, 9"):
        write_attention_maps(gpt, TEXT, tmp_path / "bad", heads=[5, 9])
    assert not (tmp_path / "bad").exists()


def test_special_tokens_in_text_cannot_break_the_page(gpt, tmp_path):
    write_attention_maps(gpt, "end </script> here", tmp_path / "maps")
    page, data = page_data(tmp_path / "maps" / "attention.html")
    assert page.count("</script>") == 1 and "</" in "".join(data["tokens"])


def test_missing_matplotlib_names_the_extra(gpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UserError, match=r"lmkit inspect attention needs matplotlib: pip install 'lmkit\[plot\]'"):
        write_attention_maps(gpt, TEXT, tmp_path / "maps")
    assert not (tmp_path / "maps").exists()


# A minimal DOM: enough for the page's script to run, recording what it draws.
NODE_HARNESS = r"""
const fs = require("fs");
const page = fs.readFileSync(process.argv[2], "utf8");
const script = page.slice(page.indexOf("<script>") + 8, page.lastIndexOf("</script>"));
const listeners = {}, elements = {}, rects = [];
const ctx = {
  measureText: t => ({width: 7 * t.length}), fillRect(x, y, w, h) { rects.push([this.fillStyle, x, y]); },
  fillText() {}, save() {}, restore() {}, rotate() {},
};
function element(id) {
  return {id, options: [], value: "0", textContent: "", innerHTML: "", width: 0, height: 0,
          add(option) { this.options.push(option); }, addEventListener(type, f) { listeners[id + ":" + type] = f; },
          getContext: () => ctx, getBoundingClientRect: () => ({left: 0, top: 0})};
}
global.document = {getElementById: id => elements[id] || (elements[id] = element(id)),
                   addEventListener: (type, f) => { listeners["document:" + type] = f; }};
global.Option = function (text, value) { this.text = text; this.value = value; };
eval(script + "\nglobalThis.DATA = DATA;");
const report = {drawn: rects.length, layers: elements.layer.options.length, heads: elements.head.options.length};
elements.layer.value = "1"; elements.head.value = "1"; listeners["head:change"]();
report.drawnAfterChange = rects.length;
const cell = Math.max(8, Math.min(28, Math.floor(640 / DATA.tokens.length)));
const margin = 12 + Math.max(...DATA.tokens.map(t => 7 * t.length));
listeners["map:mousemove"]({clientX: margin + 0.5 * cell, clientY: margin + 2.5 * cell});
report.hover = elements.hover.textContent;
elements.head.value = "-1"; listeners["head:change"]();
listeners["map:mousemove"]({clientX: margin + 1.5 * cell, clientY: margin + 1.5 * cell});
report.hoverMean = elements.hover.textContent;
console.log(JSON.stringify(report));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_page_script_draws_and_reports_weights(gpt, tmp_path):
    write_attention_maps(gpt, TEXT, tmp_path / "maps")
    _, data = page_data(tmp_path / "maps" / "attention.html")
    harness = tmp_path / "harness.js"
    harness.write_text(NODE_HARNESS)
    result = subprocess.run(["node", str(harness), str(tmp_path / "maps" / "attention.html")],
                            capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    T = len(data["tokens"])
    assert report["drawn"] == 1 + T * T and report["drawnAfterChange"] == 2 * (1 + T * T)
    assert report["layers"] == 2 and report["heads"] == 3  # the two heads and their mean
    assert report["hover"].endswith(f"{data['weights'][1][1][2][0]:.4f}") and "query 2" in report["hover"]
    mean = sum(data["weights"][1][h][1][1] for h in range(2)) / 2
    assert report["hoverMean"].endswith(f"{mean:.4f}")
