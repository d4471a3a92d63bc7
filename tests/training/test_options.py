"""The training options declared once: what the stages share, what they re-declare, and what the
settings mean (batch layout, run length, schedule), without torch."""

import dataclasses
import tomllib

import pytest

from lmkit import config as config_lib
from lmkit.config import resolve
from lmkit.errors import ConfigError
from lmkit.stages.finetune_config import FinetuneConfig
from lmkit.stages.pretrain_config import DEFAULT_STEPS, PretrainConfig
from lmkit.training import schedule
from lmkit.training.options import SCHEDULES, TrainingOptions

BASE_FIELDS = {f.name for f in dataclasses.fields(TrainingOptions)}
# Finetuning starts from a pretrained model on small data: these defaults differ, and only these.
# lr None: by the width; eval_every None: twice an epoch (issue 16's defaults that transfer).
FINETUNE_DEFAULTS = {"micro_batch": 16, "lr": None, "warmup_steps": 20, "weight_decay": 0.01, "beta2": 0.999,
                     "eval_every": None, "eval_batches": 0, "checkpoint_every": 0, "patience": 4}


def pretrain(**values):
    return resolve(PretrainConfig, {}, {"dataset": "d", "out": "o", **values})


def finetune(**values):
    return resolve(FinetuneConfig, {}, {"base": "b", "data": "d", "out": "o", **values})


def test_both_stages_take_every_training_option_and_differ_only_in_the_declared_defaults():
    pretrain_fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    finetune_fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    assert BASE_FIELDS <= set(pretrain_fields) and BASE_FIELDS <= set(finetune_fields)
    different = {name for name in BASE_FIELDS if pretrain_fields[name].default != finetune_fields[name].default}
    assert different == set(FINETUNE_DEFAULTS)
    assert {name: finetune_fields[name].default for name in different} == FINETUNE_DEFAULTS
    base = {f.name: f for f in dataclasses.fields(TrainingOptions)}
    assert all(pretrain_fields[name].default == base[name].default for name in BASE_FIELDS)  # pretrain re-declares none


def test_help_and_print_config_order_follows_the_sections():
    for cls in (PretrainConfig, FinetuneConfig):
        ordered = config_lib.ordered_fields(cls)
        assert {f.name for f in ordered} == {f.name for f in dataclasses.fields(cls)}  # complete
        ranks = [cls.SECTIONS.index(f.metadata["section"]) + 1 if f.metadata["section"] else 0 for f in ordered]
        assert ranks == sorted(ranks)
    names = [f.name for f in config_lib.ordered_fields(FinetuneConfig)]
    assert names[:3] == ["out", "base", "data"] and names.index("lora_rank") < names.index("lr")
    text = config_lib.to_toml(finetune())
    assert text.index("# -- parameter-efficient finetuning") < text.index("lora_rank = ") \
        < text.index("\n# lr = (unset)")
    assert resolve(FinetuneConfig, tomllib.loads(text), {}) == finetune()  # reads back


def test_schedule_names_match_the_schedules():
    assert SCHEDULES == ("auto", *schedule.SCHEDULES)


@pytest.mark.parametrize("make", [pretrain, finetune])
def test_accumulation_and_batch_tokens_are_one_idea(make):
    options = make(micro_batch=4, seq_len=32)
    assert options.accumulation_steps(32, 2) == 1
    assert make(micro_batch=4, accumulation=3).accumulation_steps(32, 2) == 3
    assert make(micro_batch=4, batch_tokens=512).accumulation_steps(32, 2) == 2   # 512 / (4 x 32 x 2)
    assert make(micro_batch=4, batch_tokens=512, accumulation=2).accumulation_steps(32, 2) == 2
    with pytest.raises(ValueError, match="--accumulation 3 and --batch-tokens 512: disagree"):
        make(micro_batch=4, batch_tokens=512, accumulation=3).accumulation_steps(32, 2)
    with pytest.raises(ValueError, match="--batch-tokens 500 is not a multiple of"):
        make(micro_batch=4, batch_tokens=500).accumulation_steps(32, 2)


def test_a_time_or_token_limit_alone_is_the_limit_that_holds():
    assert pretrain().step_limit(DEFAULT_STEPS) == 500 and pretrain().schedule_name() == "cosine"
    timed = pretrain(max_time="6m")
    assert timed.step_limit(DEFAULT_STEPS) == 0 and timed.max_seconds == 360
    assert timed.schedule_name() == "constant"  # its length in steps is unknown
    counted = pretrain(max_tokens=10_000)
    assert counted.step_limit(DEFAULT_STEPS) == 0 and counted.schedule_name() == "cosine"
    assert counted.schedule_steps(0, tokens_per_step=256) == 40  # the token limit in steps, rounded up
    both = pretrain(max_time="6m", max_steps=100)
    assert both.step_limit(DEFAULT_STEPS) == 100 and both.schedule_name() == "cosine"
    # finetuning: --epochs is its default length, and also off when only time or tokens bound the run
    assert finetune().step_limit_for(100, 10) == 100 and finetune(epochs=2).step_limit_for(100, 10) == 20
    assert finetune(max_time="1m").step_limit_for(100, 10) == 0
    assert finetune(max_time="1m", epochs=1).step_limit_for(100, 10) == 10
    assert finetune(max_steps=7, epochs=1).step_limit_for(100, 10) == 7


@pytest.mark.parametrize("values,message", [
    ({"max_steps": 0, "max_time": "1m", "schedule": "cosine"}, "--schedule cosine: decays over a known number"),
    ({"max_steps": 0}, "give at least one limit"),
    ({"resume": True, "auto_resume": True}, "--resume and --auto-resume: choose one"),
    ({"auto_resume": True, "force": True}, "--auto-resume and --force: choose one"),
    ({"accumulation": -1}, "--accumulation: must not be negative"),
    ({"max_steps": -1}, "--max-steps: must not be negative"),
])
def test_refusals_are_the_same_in_every_stage(values, message):
    for make in (pretrain, finetune):
        with pytest.raises(ConfigError, match=message):
            make(**values)


def test_an_option_counts_as_set_when_given_and_not_the_default():
    """What the refusal of another objective's options reads (config.changed_by_user): given on the
    command line or in the --config file, and not the stage's default; a config built in Python without that
    record: what differs from the defaults."""
    from lmkit.config import changed_by_user

    given = finetune(pooling="last", class_weights="auto")  # class_weights given, but at its default
    assert {"pooling", "class_weights"} & changed_by_user(given) == {"pooling"}
    dumped = resolve(FinetuneConfig, tomllib.loads(config_lib.to_toml(finetune())), {})  # every key, all defaults
    assert changed_by_user(dumped) == {"base", "data", "out"}
    built = FinetuneConfig(base="b", data="d", out="o", template="Q: {prompt}")
    assert changed_by_user(built) == {"template"}  # (fields without a default are never "other than" it)
