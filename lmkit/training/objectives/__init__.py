"""Training objectives, registered by name (see base.py). A new objective is one module that defines
it, its options and registers its spec, plus its line below."""

from lmkit.training.objectives import (  # noqa: F401
                                            chat,
                                            classification,
                                            distillation,
                                            grpo,
                                            instruction,
                                            language_modeling,
                                            preference,
                                            question_answering,  # noqa: F401
)
from lmkit.training.objectives.base import (
                                            OBJECTIVES,
                                            BatchLayout,
                                            Built,
                                            Count,
                                            Objective,
                                            ObjectiveInputs,
                                            ObjectiveSpec,
                                            register,
)
from lmkit.training.objectives.objective_options import NoOptions, refuse_unread_options

DEFAULT_OBJECTIVE = {"gpt": "clm", "lstm": "clm", "bert": "mlm"}  # pretraining's, by architecture
SENTENCE_OBJECTIVES = ("mlm+nsp", "mlm+sop")  # masked LM plus a sentence-pair task (Checkpoint.masked_lm)

__all__ = ["DEFAULT_OBJECTIVE", "OBJECTIVES", "SENTENCE_OBJECTIVES", "BatchLayout", "Built", "Count", "NoOptions",
           "Objective", "ObjectiveInputs", "ObjectiveSpec", "refuse_unread_options", "register"]
