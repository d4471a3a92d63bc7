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


def test_each_objective_reads_its_own_options_which_are_flags_of_the_stages_offering_it():
    """The command line stays flat: every field of an objective's options class is a flag (same name) of each stage
    that offers the objective, and options_from reads exactly those."""
    from lmkit.stages.pretrain import PRETRAIN_OBJECTIVES
    from lmkit.training.objectives import NoOptions

    finetune, pretrain = ({f.name for f in dataclasses.fields(cls)} for cls in (FinetuneConfig, PretrainConfig))
    offered = [(name, finetune) for name in (*set(TASKS) - {"auto"}, "distill")]
    offered += [(name, pretrain) for name in PRETRAIN_OBJECTIVES]
    for name, flags in offered:
        fields = {f.name for f in dataclasses.fields(OBJECTIVES[name].options)}
        assert fields <= flags, (name, fields - flags)
    assert OBJECTIVES["clm"].options is NoOptions
    read = {name: {f.name for f in dataclasses.fields(OBJECTIVES[name].options)} for name in OBJECTIVES}
    assert read["classify"] == {"val_fraction", "max_train_examples", "pooling", "class_weights", "long_text",
                                "chunk_stride", "token_dropout", "group_by_length"}
    assert read["sft"] == {"val_fraction", "max_train_examples", "template", "prompt_field", "response_field", "pack",
                           "group_by_length"}
    assert read["qa"] == {"val_fraction", "max_train_examples", "chunk_stride", "max_answer_tokens"}
    assert read["mlm"] == read["mlm+nsp"] == read["mlm+sop"] == {"mask_prob", "mask_replace", "mask_random"}
    assert read["distill"] == {"temperature", "distill_alpha"}
    config = FinetuneConfig(base="b", data="d", out="o", pooling="cls", chunk_stride=7)
    options = OBJECTIVES["classify"].options_from(config)
    assert (options.pooling, options.chunk_stride, options.val_fraction) == ("cls", 7, 0.1)
