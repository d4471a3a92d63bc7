"""pretrain --budget: the dial's choice is monotone in the budget, honours explicit flags, is printed and
recorded, keeps its choice on resume, and trains."""

import json

import numpy as np
import pytest

from lmkit import artifacts
from lmkit.config import resolve
from lmkit.errors import ConfigError, UserError
from lmkit.stages import pretrain
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training import budget
from tests.conftest import invoke_lmkit


@pytest.mark.parametrize("unique", [30_000, 1_000_000, 30_000_000])
@pytest.mark.parametrize("vocab", [512, 8192, 50_257])
def test_a_bigger_budget_never_picks_a_smaller_model_or_fewer_tokens(unique, vocab):
    previous = None
    for compute in np.geomspace(1e11, 1e19, 121):
        choice = budget.choose(float(compute), unique, vocab)
        assert choice.compute <= compute * (1 + 1e-9)  # never more than the budget
        assert choice.compute >= 0.6 * compute          # and not much less
        if previous is not None:
            assert budget.shape_parameters(choice.depth, choice.width) >= budget.shape_parameters(
                previous.depth, previous.width), compute
            assert choice.tokens >= previous.tokens, compute
        previous = choice


def test_less_data_buys_a_larger_model_trained_for_more_epochs():
    plenty, scarce = budget.choose(1e16, 100_000_000, 8192), budget.choose(1e16, 300_000, 8192)
    assert budget.shape_parameters(scarce.depth, scarce.width) > budget.shape_parameters(plenty.depth, plenty.width)
    assert scarce.epochs > 5 > plenty.epochs
    # Repeated data is discounted: D' grows more slowly than D past one epoch.
    assert budget.effective_tokens(1e6, 1e6) == 1e6
    assert 2e6 < budget.effective_tokens(4e6, 1e6) < 4e6


def _config(dataset, out, **values):
    return resolve(PretrainConfig, {}, {"dataset": str(dataset), "out": str(out), **values})


def test_flags_given_win_and_the_choice_is_recorded(dataset, tmp_path):
    chosen = budget.apply(_config(dataset, tmp_path / "a", budget_flops=2e12))
    plan = chosen.budget_plan
    assert (chosen.n_layer, chosen.d_model) == (plan["depth"], plan["width"])
    assert chosen.max_steps == plan["steps"] and chosen.lr == budget.learning_rate(plan["width"])
    assert chosen.batch_tokens == plan["batch_sequences"] * 256 and chosen.block_size == 256
    mine = budget.apply(_config(dataset, tmp_path / "b", budget_flops=2e12, lr=0.01, n_layer=1, max_steps=3))
    assert (mine.lr, mine.n_layer, mine.max_steps) == (0.01, 1, 3)
    assert mine.d_model == chosen.d_model and set(mine.budget_plan["kept"]) == {"lr", "n_layer", "max_steps"}
    assert budget.apply(mine) is mine  # applied once


def test_budget_refusals():
    with pytest.raises(ConfigError, match="--budget and --budget-flops: give one"):
        resolve(PretrainConfig, {}, {"dataset": "d", "out": "o", "budget": "1m", "budget_flops": 1e12})
    with pytest.raises(ConfigError, match="--budget: "):
        resolve(PretrainConfig, {}, {"dataset": "d", "out": "o", "budget": "fifteen"})
    with pytest.raises(ConfigError, match="--budget and --init-from"):
        resolve(PretrainConfig, {}, {"dataset": "d", "out": "o", "budget": "1m", "init_from": "x"})


def test_lstm_is_refused(dataset, tmp_path):
    with pytest.raises(UserError, match="--budget: sizes transformers .* --model lstm-small is an LSTM"):
        budget.apply(_config(dataset, tmp_path, budget_flops=1e12, model="lstm-small"))


def test_a_budget_run_trains_records_its_choice_and_resumes_with_it(dataset, tmp_path):
    out = tmp_path / "run"
    values = dict(budget_flops=5e11, max_steps=4, micro_batch=4, batch_tokens=0, eval_every=0, checkpoint_every=2,
                  precision="fp32")
    final = pretrain.run(_config(dataset, out, **values))
    stats = artifacts.load(final.path).stats
    model = json.loads((final.path / "model.json").read_text())["model"]
    assert (model["n_layer"], model["d_model"]) == (stats["budget"]["depth"], stats["budget"]["width"])
    assert stats["step"] == 4
    # A resumed budget run takes its model from the run, not from a new probe or rule.
    resumed = budget.apply(_config(dataset, out, **{**values, "budget_flops": 5e11, "resume": True}))
    assert resumed.budget_plan["resumed"] and resumed.n_layer == stats["budget"]["depth"]


def test_print_config_shows_the_probed_choice(dataset, tmp_path):
    result = invoke_lmkit("pretrain", str(dataset), "--out", str(tmp_path / "p"), "--budget", "1m", "--print-config")
    assert result.returncode == 0, result.stderr
    assert "the probe measured" in result.stderr and "--budget: depth " in result.stderr
    assert 'budget = "1m"' in result.stdout and "n_layer = " in result.stdout and "max_steps = " in result.stdout
    assert not (tmp_path / "p").exists()


def test_a_budget_run_compiles_when_told_or_when_long_enough(dataset, tmp_path, monkeypatch):
    import lmkit.devices

    monkeypatch.setattr(lmkit.devices, "can_compile", lambda device: True)
    config = _config(dataset, tmp_path, budget="15m")
    assert budget._compiles(config, set(), 15 * 60) is True
    assert budget._compiles(config, set(), 5 * 60) is False          # shorter than --compile auto's 10 minutes
    told = _config(dataset, tmp_path, budget="5m", compile=True)
    assert budget._compiles(told, {"compile"}, 5 * 60) is True
    refused = _config(dataset, tmp_path, budget="15m", compile=False)
    assert budget._compiles(refused, {"compile"}, 15 * 60) is False
    monkeypatch.setattr(lmkit.devices, "can_compile", lambda device: False)
    assert budget._compiles(config, set(), 15 * 60) is False         # no compiler here
