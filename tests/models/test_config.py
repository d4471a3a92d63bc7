import json

import pytest

from lmkit.errors import ConfigError, UserError
from lmkit.models import PRESETS, ModelConfig, build_model, model_config, register_preset
from lmkit.models.config import ARCHS


def test_round_trip_through_json():
    config = ModelConfig(arch="gpt", vocab_size=500, n_layer=3, qk_norm=True, rope_theta=500000.0, d_ff=100)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_from_dict_names_unknown_and_missing_keys_and_bad_types():
    values = {**ModelConfig(arch="gpt", vocab_size=500).to_dict(), "n_layers": 6, "colour": "red"}
    del values["vocab_size"]
    values["dropout"] = "a lot"
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(values)
    assert info.value.problems == [
        "model config: dropout: expected a number, got 'a lot'",
        "model config: unknown key 'n_layers'",
        "model config: unknown key 'colour'",
        "model config: missing key 'vocab_size'",
    ]


def test_problems_are_reported_together_naming_flags():
    with pytest.raises(ConfigError) as info:
        ModelConfig(arch="transformer", vocab_size=1000, d_model=384, n_head=5, dropout=-0.1)
    assert info.value.problems == [
        "--arch: unknown architecture 'transformer' (choose one of gpt, bert, lstm)",
        "--dropout: must be in [0, 1), got -0.1",
        "--n-head: must divide --d-model (384 % 5 != 0)",
    ]
    assert str(info.value).count("\n") == 2  # one line per problem


@pytest.mark.parametrize("fields, problem", [
    ({"vocab_size": 5}, "--vocab-size: must be at least 7 (the special tokens), got 5"),
    ({"n_layer": 0}, "--n-layer: must be positive, got 0"),
    ({"block_size": -1}, "--block-size: must be positive, got -1"),
    ({"dropout": 1.0}, "--dropout: must be in [0, 1), got 1.0"),
    ({"d_model": 36, "n_head": 4}, "--n-head: the head size (--head-size, or --d-model/--n-head) must be even for "
                                      "rotary embeddings (got 9)"),
    ({"mlp": "relu"}, "--mlp: unknown feed-forward type 'relu' (choose one of swiglu, gelu, gelu_tanh)"),
    ({"rope_theta": 0.0}, "--rope-theta: must be positive, got 0.0"),
    ({"norm_eps": 0.0}, "--norm-eps: must be positive, got 0.0"),
    ({"d_ff": -1}, "--d-ff: must be 0 (default) or positive, got -1"),
])
def test_each_bad_value_is_named(fields, problem):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{"arch": "gpt", "vocab_size": 1000, **fields})
    assert info.value.problems == [problem]


def test_lstm_refuses_settings_it_would_ignore():
    with pytest.raises(ConfigError) as info:
        ModelConfig(arch="lstm", vocab_size=1000, n_head=8, qk_norm=True)
    assert info.value.problems == ["--n-head: has no effect on an LSTM (--arch lstm); drop it",
                                   "--qk-norm: has no effect on an LSTM (--arch lstm); drop it"]
    ModelConfig(arch="lstm", vocab_size=1000, d_model=30)  # d_model % n_head is no concern of an LSTM


def test_ffn_dim_defaults():
    assert ModelConfig(arch="gpt", vocab_size=100, d_model=64).ffn_dim == 192  # 170.7 rounded up to 64s
    assert ModelConfig(arch="gpt", vocab_size=100, d_model=384).ffn_dim == 1024
    assert ModelConfig(arch="gpt", vocab_size=100, d_model=768, n_head=12).ffn_dim == 2048
    assert ModelConfig(arch="gpt", vocab_size=100, d_model=64, mlp="gelu").ffn_dim == 256
    assert ModelConfig(arch="bert", vocab_size=100, d_model=64, mlp="gelu").ffn_dim == 256
    assert ModelConfig(arch="gpt", vocab_size=100, d_model=64, d_ff=100).ffn_dim == 100


def test_config_is_immutable():
    config = ModelConfig(arch="gpt", vocab_size=100)
    with pytest.raises(AttributeError):
        config.n_layer = 40  # would bypass validation and disagree with the built model


# -- presets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_is_valid_and_small_ones_build(name):
    config = model_config(name, vocab_size=1000)
    assert config.arch in ARCHS and config.vocab_size == 1000
    if name in ("gpt2-124m", "bert-base", "encoder-base"):  # too big to build in a unit test; the config is checked
        return
    model = build_model(config)
    assert model.config == config


def test_preset_shapes():
    gpt2 = model_config("gpt2-124m", 50257)
    assert (gpt2.n_layer, gpt2.n_head, gpt2.d_model, gpt2.block_size, gpt2.mlp) == (12, 12, 768, 1024, "gelu_tanh")
    assert (gpt2.norm, gpt2.positions, gpt2.bias, gpt2.post_norm, gpt2.tie_embeddings) == ("layer", "learned", True,
                                                                                           False, True)
    bert = model_config("bert-base", 30522)
    assert (bert.norm, bert.positions, bert.post_norm, bert.type_vocab_size, bert.mlp) == ("layer", "learned", True, 2,
                                                                                          "gelu")
    assert model_config("encoder-base", 1000).family.startswith("modern encoder")
    assert gpt2.family.startswith("GPT-2") and bert.family.startswith("classic BERT")
    tiny = model_config("gpt-tiny", 1000)
    assert (tiny.n_layer, tiny.n_head, tiny.d_model, tiny.block_size) == (2, 2, 64, 128)
    assert model_config("bert-base", 1000).ffn_dim == 3072
    lstm = model_config("lstm-small", 1000)
    assert (lstm.arch, lstm.n_layer, lstm.d_model, lstm.block_size) == ("lstm", 2, 512, 256)


def test_registering_a_name_twice_is_an_error():
    before = dict(PRESETS["gpt-tiny"])
    with pytest.raises(ValueError, match="'gpt-tiny' is already registered"):
        register_preset("gpt-tiny", arch="gpt", n_layer=40)
    assert PRESETS["gpt-tiny"] == before


def test_register_rejects_unknown_fields():
    with pytest.raises(ValueError, match="n_layers"):
        register_preset("gpt-typo", arch="gpt", n_layers=3)
    assert "gpt-typo" not in PRESETS


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UserError) as info:
        model_config("gpt-huge", 1000)
    message = str(info.value)
    assert message.startswith("--model: unknown model preset 'gpt-huge' (choose one of ")
    assert all(name in message for name in PRESETS)


def test_overrides_apply_and_none_is_ignored():
    config = model_config("gpt-small", 1000, dropout=0.1, qk_norm=True, n_layer=None, block_size=None)
    assert (config.dropout, config.qk_norm, config.n_layer, config.block_size) == (0.1, True, 6, 256)


def test_bad_overrides_are_config_errors():
    with pytest.raises(ConfigError) as info:
        model_config("gpt-small", 1000, n_layers=3)
    assert info.value.problems == ["--n-layers: not a model setting"]
    with pytest.raises(ConfigError) as info:
        model_config("gpt-small", 1000, n_head=5)
    assert info.value.problems == ["--n-head: must divide --d-model (384 % 5 != 0)"]


def test_the_preset_help_names_every_preset_with_its_family():
    from lmkit.stages.pretrain_config import PRESET_HELP

    for name in PRESETS:
        assert name in PRESET_HELP, name
    for name, words in (("gpt2-124m", "GPT-2"), ("bert-base", "classic BERT"), ("encoder-base", "modern encoder"),
                        ("gpt-small", "Llama-style decoder")):
        assert model_config(name, 1000).family.startswith(words) and words in PRESET_HELP
