"""The options an objective owns, and the refusal of the ones the chosen objective does not read.

Each objective module declares a small frozen dataclass of exactly the settings it reads (classification's
pooling and class weights, sft's template, masked LM's rates ...) and its ``ObjectiveSpec`` names it. The
command line stays flat: a stage's config has one flag per setting, and the stage builds the chosen
objective's options from it (``ObjectiveSpec.options_from``). A setting of another objective that the user
gave is refused, naming the flag and the objective chosen, instead of doing nothing (``--pooling`` with
``--task sft``). The shared training options (training.options) are every objective's and never refused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmkit.config import changed_by_user, flag_name, ordered_fields
from lmkit.errors import UserError

if TYPE_CHECKING:
    from lmkit.training.objectives.base import ObjectiveSpec


@dataclass(frozen=True)
class NoOptions:
    """The options of an objective that reads none of its own (clm: the shared training options suffice)."""


@dataclass(frozen=True)
class HeldOutOptions:
    """How an objective that reads examples from one file or split holds out validation and samples training."""

    val_fraction: float            # --val-fraction: share held out when the data has no validation split
    max_train_examples: int        # --max-train-examples: a seeded subset of the training examples (0: all)


def refuse_unread_options(config: Any, chosen: list[ObjectiveSpec], what: str,
                          offered: dict[str, ObjectiveSpec]) -> None:
    """Refuse, in one line naming every such flag, the objective options the user set in ``config`` that none of
    the ``chosen`` objectives reads. ``offered``: every objective the stage offers, by the words that choose it
    (``"--task classify"``, ``"--teacher"``), whose options are the candidates; ``what``: the choice made
    (``"--task sft"``).

    "Set" means given on the command line or in the --config file and different from the stage's default
    (config.changed_by_user): a --print-config dump, which lists every option, reads back."""
    read = {f.name for spec in chosen for f in dataclasses.fields(spec.options)}
    readers: dict[str, list[str]] = {}
    for label, spec in offered.items():
        for f in dataclasses.fields(spec.options):
            readers.setdefault(f.name, []).append(label)
    set_by_user = changed_by_user(config)
    unread = [f.name for f in ordered_fields(config)  # in --help's order
              if f.name in readers and f.name in set_by_user and f.name not in read]
    if not unread:
        return
    groups: dict[str, list[str]] = {}  # who reads them -> the flags
    for name in unread:
        groups.setdefault(_either(readers[name]), []).append(flag_name(name))
    if len(groups) == 1:
        ((who, flags),) = groups.items()
        said = f"{_joined(flags, 'and')}: read by {who}, not by {what}"
    else:
        said = ", ".join(f"{_joined(flags, 'and')} (read by {who})" for who, flags in groups.items())
        said += f": not read by {what}"
    raise UserError(f"{said}; drop {'it' if len(unread) == 1 else 'them'}")


def _either(labels: list[str]) -> str:
    """``["--task classify", "--task qa"]`` as ``--task classify or qa``."""
    by_flag: dict[str, list[str]] = {}
    for label in labels:
        flag, _, value = label.partition(" ")
        by_flag.setdefault(flag, []).append(value)
    return _joined([flag + (" " + _joined(values, "or") if any(values) else "") for flag, values in by_flag.items()],
                   "or")


def _joined(items: list[str], word: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {word} {items[-1]}"
