"""Everything after training, by kind of model: the registry of task specs (base.py). A new kind is one module
that defines its spec and registers it, plus its line below; ``evaluate``, ``generate`` and ``serve`` look it up.

    from lmkit import tasks
    spec = tasks.for_checkpoint(read_checkpoint("runs/cls/final"))   # the classify spec
"""

from lmkit.tasks.base import TASKS, TaskSpec, evaluation_names, for_checkpoint, metric_names, register
from lmkit.tasks import text, sft, fill_mask, classify, qa  # noqa: F401 (each registers its spec)

__all__ = ["TASKS", "TaskSpec", "evaluation_names", "for_checkpoint", "metric_names", "register"]
