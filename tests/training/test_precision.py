"""--precision auto for training on a CPU with native bf16: the faster of bf16 and fp32 for this model, measured
on the run's first batch once and cached, the same for every rank, kept by a resumed run."""

import json
import math

import numpy as np
import pytest
import torch

from lmkit.config import resolve
from lmkit.data.packing import TokenStream
from lmkit.models import build_model
from lmkit.models.presets import model_config
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training import precision as precision_module
from lmkit.training.distributed import Distributed
from lmkit.training.objectives import BatchLayout
from lmkit.training.objectives.language_modeling import CausalLM


@pytest.fixture()
def objective():
    tokens = (np.arange(4000, dtype=np.int32) % 57) + 7
    layout = BatchLayout(micro_batch=2, accumulation=1, world_size=1)
    return CausalLM(TokenStream(tokens, 1, 4000), None, 16, layout, seed=0, device=torch.device("cpu"))


def test_explicit_precisions_and_cpus_without_native_bf16_are_not_measured(objective, monkeypatch):
    model = build_model(model_config("gpt-tiny", 64))
    monkeypatch.setattr(precision_module, "_measure", lambda *a: pytest.fail("measured"))
    assert precision_module.training_precision("fp32", model, objective, 2, Distributed()) == ("fp32", "--precision")
    monkeypatch.setattr(precision_module, "resolve_precision", lambda requested, device: "fp32")
    assert precision_module.training_precision("auto", model, objective, 2, Distributed()) == \
        ("fp32", "auto: no native bf16 here")


def test_auto_picks_the_faster_measured_once_and_cached(objective, monkeypatch, tmp_path):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(precision_module, "resolve_precision", lambda requested, device: "bf16")
    calls = []
    monkeypatch.setattr(precision_module, "_measure", lambda *a: calls.append(1) or {"bf16": 0.30, "fp32": 0.20})
    model = build_model(model_config("gpt-tiny", 64))
    chosen, why = precision_module.training_precision("auto", model, objective, 2, Distributed())
    assert chosen == "fp32" and why == "auto: faster for this model here (300 ms a step in bf16, 200 in fp32)"
    assert precision_module.training_precision("auto", model, objective, 2, Distributed())[0] == "fp32"
    assert calls == [1]  # the second run read the cache
    cached = json.loads((tmp_path / "training-precision.json").read_text())
    assert list(cached.values()) == [{"bf16": 0.30, "fp32": 0.20}]


def test_only_rank_0_measures_and_every_rank_takes_its_choice(objective, monkeypatch):
    monkeypatch.setattr(precision_module, "resolve_precision", lambda requested, device: "bf16")
    monkeypatch.setattr(precision_module, "cached_measurement", lambda *a: pytest.fail("rank 1 measured"))
    # rank 0 measured bf16 faster: its 1.0 is the sum the collective brings every rank
    monkeypatch.setattr(precision_module, "sum_across_ranks", lambda value, env: value + 1.0)
    model = build_model(model_config("gpt-tiny", 64))
    second = Distributed(rank=1, world_size=2)
    assert precision_module.training_precision("auto", model, objective, 2, second) == \
        ("bf16", "auto: rank 0's measurement")


def test_resumed_and_sharded_runs_are_not_measured(objective, monkeypatch):
    monkeypatch.setattr(precision_module, "resolve_precision", lambda requested, device: "bf16")
    monkeypatch.setattr(precision_module, "_measure", lambda *a: pytest.fail("measured"))
    model = build_model(model_config("gpt-tiny", 64))
    assert precision_module.training_precision("auto", model, objective, 2, Distributed(), started_in="fp32") == \
        ("fp32", "auto: as the run started")
    assert precision_module.training_precision("auto", model, objective, 2, Distributed(), sharded=True) == \
        ("bf16", "auto (--shard: not measured)")
    # an explicit precision is the user's, sharded or resumed
    assert precision_module.training_precision("fp32", model, objective, 2, Distributed(), "bf16", True) == \
        ("fp32", "--precision")


def test_the_measurement_leaves_the_rng_and_the_gradients_as_they_were(objective):
    model = build_model(model_config("gpt-tiny", 64))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    measured = precision_module._measure(model, objective)
    assert set(measured) == {"bf16", "fp32"} and all(math.isfinite(v) and v > 0 for v in measured.values())
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())


def test_a_resumed_run_keeps_the_precision_auto_chose(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "resolve_precision", lambda requested, device: "bf16")
    faster = {"value": "bf16"}
    monkeypatch.setattr(precision_module, "cached_measurement",
                        lambda *a: {"bf16": 0.1, "fp32": 0.2} if faster["value"] == "bf16" else {"bf16": 0.2,
                                                                                               "fp32": 0.1})
    values = {"dataset": str(dataset), "out": str(tmp_path / "run"), "seq_len": 32, "micro_batch": 4,
              "eval_every": 0, "checkpoint_every": 2, "precision": "auto", "log_every": 1}
    pretrain.run(resolve(PretrainConfig, {}, {**values, "max_steps": 2}))
    faster["value"] = "fp32"  # the machine now measures the other way
    final = pretrain.run(resolve(PretrainConfig, {}, {**values, "max_steps": 4, "resume": True}))
    state = json.loads((final.path / "trainer" / "state.json").read_text())["state"]
    assert state["extra"]["precision"] == "bf16"
