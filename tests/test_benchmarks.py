"""The arithmetic behind the figures benchmarks/finetune.py reports (the training itself is the demo's)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_finetune_benchmark():
    spec = importlib.util.spec_from_file_location("finetune_benchmark", ROOT / "benchmarks" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_pairs_each_seed_with_the_pretrained_run_of_that_seed():
    bench = load_finetune_benchmark()
    runs = {"pretrained": [{"accuracy": 0.80, "macro_f1": 0.70}, {"accuracy": 0.70, "macro_f1": 0.60},
                           {"accuracy": 0.75, "macro_f1": 0.65}],
            "scratch": [{"accuracy": 0.70, "macro_f1": 0.50}, {"accuracy": 0.70, "macro_f1": 0.70},
                        {"accuracy": 0.80, "macro_f1": 0.60}]}
    summary = bench.summarize(runs)
    assert summary["pretrained"]["accuracy"] == {"mean": 0.75, "sd": 0.05}
    assert summary["scratch"]["macro_f1"]["mean"] == pytest.approx(0.6)
    assert summary["scratch"]["pretrained_minus_this_accuracy"] == pytest.approx((0.10 + 0.0 - 0.05) / 3, abs=1e-4)
    assert summary["scratch"]["pretrained_minus_this_macro_f1"] == pytest.approx((0.20 - 0.10 + 0.05) / 3, abs=1e-4)
    assert summary["scratch"]["pretrained_wins_ties_losses"] == [1, 1, 1]
    assert "pretrained_wins_ties_losses" not in summary["pretrained"]
    table = bench.markdown({"summary": {"bert": summary}})
    assert "| bert | scratch | 0.733 ± 0.058 | 0.600 ± 0.100 | +0.017, +0.050 | 1/1/1 |" in table


def test_every_variant_is_a_finetune_setting():
    from lmkit.stages.finetune_config import FinetuneConfig

    bench = load_finetune_benchmark()
    fields = set(FinetuneConfig.__dataclass_fields__)
    for variants in bench.VARIANTS.values():
        assert "pretrained" in variants and variants["pretrained"] == {}
        for flags in variants.values():
            assert set(flags) <= fields
