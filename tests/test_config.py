from dataclasses import dataclass

import pytest

from lmkit import config as config_lib
from lmkit.config import option, validate
from lmkit.errors import ConfigError, UserError


@dataclass(kw_only=True)
class Demo:
    out: str = option(help="where")
    size: int = option(10, "a size")
    rate: float = option(0.5, "a rate")
    names: list[str] = option(["a", "b"], "names", choices=("a", "b", "c"))
    label: str | None = option(None, "optional")
    flag: bool = option(False, "a flag", affects_output=False)

    def __post_init__(self):
        problems = []
        if self.size < 0:
            problems.append("--size: must not be negative")
        if self.rate > 1:
            problems.append("--rate: must be at most 1")
        validate(self, problems)


def test_precedence_defaults_file_flags():
    cfg = config_lib.resolve(Demo, {"out": "file", "size": 3, "rate": 0.25}, {"size": 7, "rate": None})
    assert (cfg.out, cfg.size, cfg.rate, cfg.names) == ("file", 7, 0.25, ["a", "b"])


def test_unknown_key_is_named_with_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('out = "x"\nvocab = 3\n')
    with pytest.raises(ConfigError) as info:
        config_lib.resolve(Demo, config_lib.load_toml(path), {}, path)
    assert f"{path}: unknown key 'vocab'" in str(info.value)


def test_all_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        config_lib.resolve(Demo, {"size": "many", "names": ["z"]}, {"rate": "fast"})
    text = str(info.value)
    assert "config: size: expected an integer" in text
    assert "--rate: expected a number" in text
    assert "--names: 'z' is not one of a, b, c" in text
    assert "--out: required" in text


def test_post_init_problems_collected():
    with pytest.raises(ConfigError) as info:
        config_lib.resolve(Demo, {}, {"out": "o", "size": -1, "rate": 2.0})
    assert info.value.problems == ["--size: must not be negative", "--rate: must be at most 1"]


def test_lists_from_flag_strings_and_bools():
    cfg = config_lib.resolve(Demo, {"flag": True}, {"out": "o", "names": "c, a"})
    assert cfg.names == ["c", "a"] and cfg.flag is True


def test_toml_round_trip(tmp_path):
    cfg = config_lib.resolve(Demo, {}, {"out": 'a "quoted"\\path', "names": "c", "label": "y"})
    path = tmp_path / "round.toml"
    path.write_text(config_lib.to_toml(cfg))
    again = config_lib.resolve(Demo, config_lib.load_toml(path), {}, path)
    assert again == cfg


def test_identity_excludes_runtime_fields():
    cfg = config_lib.resolve(Demo, {}, {"out": "o"})
    assert "flag" not in config_lib.identity_dict(cfg) and "flag" in config_lib.as_dict(cfg)


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("out = \n")
    with pytest.raises(UserError, match=r"bad.toml: invalid TOML"):
        config_lib.load_toml(bad)
    with pytest.raises(UserError, match=r"nope.toml: config file not found"):
        config_lib.load_toml(tmp_path / "nope.toml")


def test_missing_required_is_a_usage_error_naming_the_argument():
    from lmkit.stages.finetune_config import FinetuneConfig
    from lmkit.stages.pretrain_config import PretrainConfig

    with pytest.raises(ConfigError) as info:
        config_lib.resolve(FinetuneConfig, {}, {"out": "run", "data": "labeled"})
    assert info.value.problems == ["BASE: required (the command's argument)"]
    assert info.value.exit_code == 2
    # pretrain's datasets may come from a --mixture file instead: its own check says so
    with pytest.raises(ConfigError, match=r"DATASET: give at least one dataset artifact \(or a --mixture file\)"):
        config_lib.resolve(PretrainConfig, {}, {"out": "run"})
