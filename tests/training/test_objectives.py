"""The objective registry: every stage's choices are registered objectives, each fits real architectures."""

import dataclasses

import pytest

from lmkit.models.config import ARCHS
from lmkit.stages.finetune_config import TASKS, FinetuneConfig
from lmkit.stages.pretrain_config import PretrainConfig
from lmkit.training.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, SENTENCE_OBJECTIVES, ObjectiveSpec, register


def choices(cls, name):
    return set(next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]) - {"auto"}


def test_stage_choices_are_registered_objectives():
    # The config files spell the names so that --help does not import torch; these keep them in step.
    # (the sentence-pair objectives are pretraining's; finetuning continues with plain masked LM)
    assert set(TASKS) - {"auto"} == choices(FinetuneConfig, "task") == set(OBJECTIVES) - {"distill",
                                                                                         *SENTENCE_OBJECTIVES}
    assert choices(PretrainConfig, "objective") == set(DEFAULT_OBJECTIVE.values()) | set(SENTENCE_OBJECTIVES)
    for arch, name in DEFAULT_OBJECTIVE.items():
        assert arch in OBJECTIVES[name].archs


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_names_real_architectures_and_its_metric(name):
    spec = OBJECTIVES[name]
    assert spec.name == name and set(spec.archs) <= set(ARCHS) and spec.summary
    assert spec.metric in spec.metrics


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'clm' is registered twice"):
        register(ObjectiveSpec("clm", ("gpt",), OBJECTIVES["clm"].build, "again"))
    assert OBJECTIVES["clm"].summary.startswith("causal")
