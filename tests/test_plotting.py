"""Training curves: the panels a run's metrics call for, several runs overlaid, the PNG read back."""

import json
import sys

import numpy
import pytest

from lmkit.errors import UserError
from lmkit.plotting import PLOT_FILE, plot_run_end, plot_runs, read_run, training_figure
from lmkit.progress import reporter
from tests.conftest import train_tiny

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")
BASE_PANELS = ["training loss vs step", "training loss vs tokens", "learning rate vs step"]


@pytest.fixture(scope="module")
def runs(dataset, tmp_path_factory):
    """Two short runs that log every step and validate every other one."""
    root = tmp_path_factory.mktemp("plots")
    return [train_tiny(dataset, root / name, max_steps=4, log_every=1, eval_every=2, eval_batches=1,
                       warmup_steps=2, **overrides).path.parent
            for name, overrides in (("small", {}), ("wide", {"d_model": 96, "n_head": 2}))]


def panels(figure):
    return [ax.get_title() for ax in figure.axes if ax.get_visible()]


def legend(figure, title):
    (ax,) = [ax for ax in figure.axes if ax.get_title() == title]
    return [text.get_text() for text in ax.get_legend().get_texts()]


def read_png(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.format, image.size, numpy.asarray(image.convert("L"), dtype=float)


def test_several_runs_are_overlaid_with_a_legend(runs, tmp_path):
    out = plot_runs(runs, tmp_path / "compare.png")
    kind, size, pixels = read_png(out)
    assert kind == "PNG" and size == (1200, 1080)  # 3 rows of 2 panels at 100 dpi
    assert pixels.std() > 10
    figure = training_figure([read_run(run) for run in runs])
    assert panels(figure) == BASE_PANELS + ["validation loss vs step", "validation bpb vs step",
                                            "validation ppl vs step"]
    assert legend(figure, "training loss vs step") == ["small", "wide"]
    assert legend(figure, "training loss vs tokens") == ["small", "small (validation)", "wide", "wide (validation)"]
    (ax,) = [ax for ax in figure.axes if ax.get_title() == "validation loss vs step"]
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[2.0, 4.0], [2.0, 4.0]]


def test_finetune_metrics_get_their_own_panels(tmp_path):
    run = tmp_path / "clf"
    run.mkdir()
    lines = [{"step": s, "tokens": 100 * s, "loss": 1.0 / s, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 5.0}
             for s in (1, 2, 3, 4)]
    lines += [{"step": s, "tokens": 100 * s, "val_loss": 0.9 / s, "val_accuracy": 0.5 + s / 10, "val_f1": 0.4 + s / 10}
              for s in (2, 4)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 5, "lo')
    out = plot_runs([run], run / PLOT_FILE)
    assert read_png(out)[1] == (1200, 1080)
    figure = training_figure([read_run(run)])
    assert panels(figure) == BASE_PANELS + ["validation loss vs step", "validation accuracy vs step",
                                            "validation f1 vs step"]


def test_unreadable_lines_are_skipped_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 8, "loss": 2.0, "lr": 0.1}\nnot json\n[1]\n')
    assert len(read_run(run).train) == 1
    assert "skipped 2 unreadable line(s)" in capsys.readouterr().err


def test_runs_named_alike_are_told_apart(runs, tmp_path):
    twin = tmp_path / "other" / runs[0].name
    twin.mkdir(parents=True)
    (twin / "metrics.jsonl").write_text((runs[0] / "metrics.jsonl").read_text())
    plot_runs([runs[0], twin], tmp_path / "twins.png")
    figure = training_figure([read_run(runs[0]), read_run(twin)])
    assert figure.axes[0].get_legend() is not None
    names = legend(figure, "training loss vs step")
    assert len(set(names)) == 2 and str(twin) in names


def test_not_a_run_directory(runs, tmp_path):
    with pytest.raises(UserError, match=f"no metrics.jsonl .*; the run directory is {runs[0]}"):
        plot_runs([runs[0] / "final"], tmp_path / "x.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="no metrics logged yet"):
        plot_runs([tmp_path / "empty"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_at_the_end_of_a_run(runs, tmp_path, monkeypatch, capsys):
    path = plot_run_end(runs[0])
    assert path == runs[0] / PLOT_FILE and read_png(path)[0] == "PNG"
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "metrics.jsonl").write_text("")
    assert plot_run_end(tmp_path / "nothing") is None
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(reporter, "verbose", True)
    assert plot_run_end(runs[1]) is None  # quietly: a missing extra must not fail a training run
    assert "no training plot: matplotlib is not installed (pip install 'lmkit[plot]')" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"lmkit plot needs matplotlib: pip install 'lmkit\[plot\]'"):
        plot_runs(runs, tmp_path / "x.png")
