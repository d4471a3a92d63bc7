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


def test_classify_reads_batches_of_similar_lengths_and_every_example_once():
    """The classifier's training batches come from the length-grouped order (issue 30): over an epoch the same
    examples as at random, with far less padding."""
    import numpy as np
    import torch

    from lmkit.training.objectives.base import BatchLayout
    from lmkit.training.objectives.classification import Classification
    from lmkit.vocab import Specials

    rng = np.random.default_rng(0)
    texts = [list(range(5, 5 + int(n))) for n in rng.integers(3, 120, size=400)]
    labels = np.arange(400) % 2
    layout = BatchLayout(micro_batch=8, accumulation=1, world_size=1)
    specials = Specials(pad=0, eos=1)

    def epoch(grouped: bool) -> tuple[list[int], int]:
        objective = Classification(texts, labels, [], np.array([]), 2, "gpt", 128, layout, 0, torch.device("cpu"),
                                   specials, group_by_length=grouped)
        seen, padding = [], 0
        for step in range(len(texts) // 8):
            batch = objective.train_batch(step, 0, 0)
            mask = batch["attention_mask"]
            padding += int((~mask).sum())
            seen += mask.sum(dim=1).tolist()
        return sorted(seen), padding

    grouped_lengths, grouped_padding = epoch(True)
    random_lengths, random_padding = epoch(False)
    assert grouped_lengths == random_lengths == sorted(len(t) for t in texts)  # every example once
    assert grouped_padding * 5 < random_padding


def test_classify_batches_repeat_a_few_widths():
    """Training and validation batches are padded to framing.padded_width (issue 30): over an epoch of texts of every
    length up to 300 tokens a few widths recur, each holding its longest row, so that per-shape state (kernels,
    oneDNN's cached primitives) and freed buffers are reused and resident memory stays flat."""
    import numpy as np
    import torch

    from lmkit.data.framing import padded_width
    from lmkit.training.objectives.base import BatchLayout
    from lmkit.training.objectives.classification import Classification
    from lmkit.vocab import Specials

    rng = np.random.default_rng(0)
    texts = [list(range(5, 5 + int(n))) for n in rng.integers(1, 300, size=800)]
    labels = np.arange(800) % 2
    layout = BatchLayout(micro_batch=8, accumulation=1, world_size=1)
    objective = Classification(texts, labels, texts[:64], labels[:64], 2, "gpt", 512, layout, 0, torch.device("cpu"),
                               Specials(pad=0, eos=1), group_by_length=True)
    widths, longest = set(), set()
    for step in range(len(texts) // 8):
        batch = objective.train_batch(step, 0, 0)
        width, rows = batch["idx"].shape[1], int(batch["attention_mask"].sum(dim=1).max())
        assert width == padded_width(rows)
        widths.add(width)
        longest.add(rows)
    assert len(widths) <= 8 + 3 * 4  # 8, 16, ..., 64, then four a doubling up to 320
    assert len({-(-n // 8) for n in longest}) > 2 * len(widths)  # a multiple of 8 made twice as many shapes or more

    seen = []

    class Recorder(torch.nn.Module):  # validation's batches, through predict
        def forward(self, idx, targets, mask, types):
            seen.append((idx.shape[1], int(mask.sum(dim=1).max())))
            return torch.zeros(idx.shape[0], 2), None

    objective.evaluate(Recorder(), 0)
    assert seen and all(width == padded_width(rows) for width, rows in seen)
