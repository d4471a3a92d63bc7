"""What every training objective is, what it is built from, and the registry of them.

An objective supplies batches at global sample positions, a loss and validation; the loop knows
nothing else about the task. Each registered :class:`ObjectiveSpec` names the architectures it
trains and the options it reads (objective_options.py), and builds its objective from an
:class:`ObjectiveInputs` (its options, the data, the model's shape), so a stage looks an objective
up instead of switching on its name, and a mismatch (MLM on a GPT) is refused before any compute.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Protocol, Sequence, TypeVar

import torch
from torch import nn

from lmkit import artifacts
from lmkit.errors import UserError
from lmkit.models.config import ModelConfig
from lmkit.tokenizer import specials_in
from lmkit.training.objectives.objective_options import HeldOutOptions, NoOptions
from lmkit.vocab import Specials

if TYPE_CHECKING:
    import numpy as np

    from lmkit.data.packing import LengthGroupedOrder

Options = TypeVar("Options")  # an objective's options class (ObjectiveSpec.options)


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch splits into micro-batches across gradient accumulation and ranks."""

    micro_batch: int
    accumulation: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    def start(self, step: int, micro: int, rank: int) -> int:
        """Global sample position of (step, micro-batch, rank): rank-interleaved within a step."""
        return step * self.global_batch + (micro * self.world_size + rank) * self.micro_batch


def indices_at(count: int, layout: BatchLayout, seed: int, step: int, micro: int, rank: int,
               order: LengthGroupedOrder | None = None) -> np.ndarray:
    """Which of ``count`` examples a micro-batch reads: those at its global sample positions, epoch after epoch
    of seeded permutations (packing.sample_indices), or in ``order`` (the examples grouped by length), so that a
    resumed run reads what the uninterrupted one would."""
    from lmkit.data.packing import sample_indices

    start = layout.start(step, micro, rank)
    if order is not None:
        return order.indices(start, layout.micro_batch)
    return sample_indices(count, seed, start, layout.micro_batch)


def examples_at(examples: Sequence[Any], layout: BatchLayout, seed: int, step: int, micro: int, rank: int,
                order: LengthGroupedOrder | None = None) -> list[Any]:
    """The examples a micro-batch reads (:func:`indices_at`)."""
    return [examples[i] for i in indices_at(len(examples), layout, seed, step, micro, rank, order)]


def held_out(examples: list[Any], options: HeldOutOptions, seed: int, notes: list[str], unit: str
             ) -> tuple[list[Any], list[Any]]:
    """(train, validation) of a file's examples: --val-fraction held out and --max-train-examples drawn,
    both seeded by --seed, each said in ``notes`` (``unit``: what an example is, for the messages)."""
    from lmkit.data.split import seeded_subset, split_off

    train, validation = split_off(examples, options.val_fraction, seed)
    chosen = seeded_subset(len(train), options.max_train_examples, seed)
    if chosen is not None:
        notes.append(f"training on {len(chosen)} of {len(train)} {unit} (--max-train-examples)")
        train = [train[i] for i in chosen]
    notes.append(f"validation: {len(validation)} of {len(examples)} {unit} held out (--val-fraction "
                 f"{options.val_fraction})")
    return train, validation


@dataclass(frozen=True)
class Count:
    """What the loop and the stage's checks need to know of a set of examples."""

    count: int


class Objective(Protocol):
    """What the loop (and a stage's checks) may rely on. Batches carry ``targets`` with
    IGNORE_INDEX where nothing is predicted: the loop weights micro-batches by their counts."""

    name: str
    tokens_per_sample: int
    train_windows: Any          # has ``count``: the stage refuses a split smaller than one batch
    val_windows: Any | None

    def train_batch(self, step: int, micro: int, rank: int) -> dict[str, torch.Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, max_batches: int) -> dict[str, float]: ...

    # Optional: ``train_metrics() -> dict[str, float]``, the objective's own figures of the training steps since
    # the last logged step (an RL run's mean reward, pass rate, KL, reply length), averaged and reset; the loop logs
    # them with the loss (rank 0's).


@dataclass
class ObjectiveInputs(Generic[Options]):
    """What an objective is built from: its own options (its spec's ``options`` class, built by the stage from
    its flags), the data, the model's shape and the batch; of the shared training options, the seed."""

    options: Options
    data: Path                          # a dataset artifact, or a file (sft)
    tokenizer: artifacts.Artifact       # the model's tokenizer: data must have been made with it
    model_config: ModelConfig
    seq_len: int
    layout: BatchLayout
    device: torch.device
    seed: int                           # --seed: data order, masking, augmentation
    teacher: Any | None = None          # an lmkit.checkpoint.Checkpoint to distill from
    more_data: list[Path] = field(default_factory=list)  # pretraining on a mixture: the other datasets
    weights: list[float] = field(default_factory=list)   # a mixture's sampling weights (--weights; empty: by size)
    mix_alpha: float | None = None      # or the power of the sizes (--mix-alpha)
    inner: Objective | None = None      # what a wrapping objective (distill) wraps
    notes: list[str] = field(default_factory=list)  # printed at the start of the run
    base: Any | None = None             # the lmkit.checkpoint.Checkpoint finetuning starts from (its chat template)

    @cached_property  # specials.json, read once
    def specials(self) -> Specials:
        """The special token ids of the model's tokenizer."""
        return specials_in(self.tokenizer.path)


@dataclass
class Built:
    objective: Objective
    extra: dict[str, Any] = field(default_factory=dict)   # model.json additions (a classifier's head, a template)


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    archs: tuple[str, ...]                          # the architectures it trains
    build: Callable[[ObjectiveInputs], Built]
    summary: str                                    # one line, for messages
    metric: str = "val_loss"                        # the default validation metric
    metrics: tuple[str, ...] = ("val_loss",)        # the validation metrics it reports
    unit: str = "examples"                          # what one training sample is, for messages
    fixed_shapes: bool = False                      # every batch has one shape: --compile auto may compile it
    options: type = NoOptions                       # the frozen dataclass of the settings it reads
    # The tokenizer it trains with when it adds tokens to the base's (chat: lmkit's chat tokens), from its options,
    # the base's tokenizer artifact and the base checkpoint; the model's vocabulary grows to it (new rows: the
    # mean of the old embeddings). None: the base's tokenizer as it is.
    vocabulary: Callable[[Any, artifacts.Artifact, Any], artifacts.Artifact] | None = None

    def options_from(self, config: Any) -> Any:
        """This objective's options, read from a stage's flat config (one flag per field, same names)."""
        return self.options(**{f.name: getattr(config, f.name) for f in dataclasses.fields(self.options)})

    def check_arch(self, arch: str, flag: str, what: str) -> None:
        """Refuse a model this objective does not train, naming the flag that chose it (``--task sft``)."""
        if arch not in self.archs:
            raise UserError(f"{flag} {self.name}: does not fit a {arch} model ({what}); {self.name} trains "
                            f"{', '.join(self.archs)}")


OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    if spec.name in OBJECTIVES:
        raise ValueError(f"objective {spec.name!r} is registered twice")  # a bug, not a user error
    OBJECTIVES[spec.name] = spec
    return spec


def kept_kind(base: Any) -> dict[str, Any]:
    """model.json's additions that keep the base's kind through a training that does not change it (preference
    tuning, RL): an SFT model's template, a chat model's template and stop ids; none for a plain language model."""
    if base is None:
        return {}
    if base.chat is not None:
        return {"chat": base.chat.to_dict(), "stop": list(base.stop)}
    if base.template is not None:
        return {"template": base.template}
    return {"stop": list(base.stop)} if base.stop else {}


def dataset_for(inputs: ObjectiveInputs, path: Path | None = None) -> artifacts.Artifact:
    """The dataset artifact at ``path`` (default ``inputs.data``), refused when it was tokenized with another
    tokenizer than the model's."""
    path = path or inputs.data
    dataset = artifacts.load(path, kind="dataset")
    theirs = artifacts.load(dataset.path / "tokenizer", kind="tokenizer")
    if theirs.id != inputs.tokenizer.id:
        raise UserError(f"{path}: was tokenized with another tokenizer than the model's; re-run lmkit "
                        f"preprocess with --tokenizer {inputs.tokenizer.path}")
    return dataset


def datasets_for(inputs: ObjectiveInputs) -> list[artifacts.Artifact]:
    """Every dataset of the run: ``inputs.data`` and, for a mixture, ``inputs.more_data``."""
    return [dataset_for(inputs, path) for path in [inputs.data, *inputs.more_data]]
