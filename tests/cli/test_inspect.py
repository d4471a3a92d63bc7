"""`lmkit inspect attention` as a user runs it: pictures written, refusals as exit code 1."""

import pytest

from tests.conftest import invoke_lmkit, train_tiny

pytest.importorskip("matplotlib")


def test_attention_maps_of_a_checkpoint(dataset, tmp_path):
    checkpoint = train_tiny(dataset, tmp_path / "run").path
    out = tmp_path / "maps"
    result = invoke_lmkit("inspect", "attention", str(checkpoint), "--text", "An object is", "--out", str(out),
                          "--layers", "1", "--heads", "0,1", check=True)
    assert result.stdout.strip() == f"{out / 'attention.html'}: attention browser; 3 PNG heatmap(s) in {out}"
    assert sorted(p.name for p in out.iterdir()) == ["attention.html", "layer1-head0.png", "layer1-head1.png",
                                                     "layer1.png"]
    result = invoke_lmkit("inspect", "attention", str(checkpoint), "--text", "x", "--out", str(out), "--layers", "a")
    assert result.returncode == 1 and "--layers: expected comma-separated indices" in result.stderr
    result = invoke_lmkit("inspect", "attention", str(checkpoint), "--out", str(out))
    assert result.returncode == 2 and "--text" in result.stderr
    assert "attention" in invoke_lmkit("inspect", "--help", check=True).stdout


def test_lstm_has_no_attention(dataset, tmp_path):
    checkpoint = train_tiny(dataset, tmp_path / "run", model="lstm-small", d_model=32, n_layer=1).path
    result = invoke_lmkit("inspect", "attention", str(checkpoint), "--text", "x", "--out", str(tmp_path / "maps"))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: {checkpoint}: an LSTM (arch lstm) has no attention to show; "
                                     "attention maps need a gpt or bert checkpoint")
    assert not (tmp_path / "maps").exists()
