"""Everything after training, by kind of model: the registry of task specs (base.py). A new kind is one module
that defines its spec, plus its line below; ``evaluate``, ``generate`` and ``serve`` look it up.

    from lmkit import tasks
    spec = tasks.for_checkpoint(read_checkpoint("runs/cls/final"))   # the classify spec
"""

from lmkit.tasks import chat, classify, fill_mask, qa, sft, text
from lmkit.tasks.base import TASKS, TaskSpec, evaluation_names, for_checkpoint, metric_names, register

# In this order: it is the order messages list the kinds (and their evaluations) in.
for _spec in (text.SPEC, sft.SPEC, chat.SPEC, fill_mask.SPEC, classify.SPEC, qa.SPEC):
    register(_spec)

__all__ = ["TASKS", "TaskSpec", "evaluation_names", "for_checkpoint", "metric_names", "register"]
