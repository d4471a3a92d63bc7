"""What a kind of model does after training, and the registry of kinds: the sibling of the objective registry
(``lmkit.training.objectives``).

A :class:`TaskSpec` says which checkpoints it serves and everything ``evaluate``, ``generate`` and ``serve``
do with them: the evaluations it offers (``evaluate --task``), how it loads its model and answers inputs, how
the answers are shown, and its server routes. The stages look the spec up (:func:`for_checkpoint`) and never
switch on a kind's name, so a new kind of model is one module here plus its registration in ``__init__.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from lmkit.checkpoint import Checkpoint
from lmkit.errors import UserError

if TYPE_CHECKING:  # the stages' configs are plain dataclasses: the tasks read the flags they document
    from lmkit import artifacts
    from lmkit.evaluation.gate import Condition
    from lmkit.evaluation.scoring import Inference
    from lmkit.evaluation.tasks import TaskOutcome
    from lmkit.stages.evaluate_config import EvaluateConfig
    from lmkit.stages.generate_config import GenerateConfig
    from lmkit.tokenizer import Tokenizer

# What an evaluation reads: token documents (a dataset artifact's split, or raw text files tokenized with the
# checkpoint's tokenizer), or JSON Lines files of examples (choice items, prompts with references, questions).
DOCUMENTS, JSONL = "documents", "jsonl"


@dataclass(frozen=True)
class LoadOptions:
    """How generate and serve load a model to answer with."""

    device: str = "cpu"
    precision: str = "fp32"
    quantize: str | None = None          # "int8", or None: as trained
    batch_size: int = 8                  # inputs computed together
    truncate: str = "left"               # a prompt longer than the context: "left" keeps its end, "error" refuses
    compile: bool | None = None          # torch.compile the decoding step; None: auto, by the job's size
    new_tokens: float = 0                # the job's size in new tokens (0: unknown; math.inf: a server's)
    start_token: bool | None = None      # a plain prompt after the start token (True), alone (False), None: the model's


@dataclass
class Loaded:
    """A checkpoint's model ready to answer, with its tokenizer (a text model's is a Generator instead)."""

    checkpoint: Checkpoint
    model: Any                           # the network, in eval mode on its device
    tokenizer: Any                       # lmkit's Tokenizer, or an imported one


def load_model(checkpoint: Checkpoint, options: LoadOptions) -> Loaded:
    """The checkpoint's network for inference (lmkit.generation.model.load_model) and its tokenizer."""
    from lmkit.generation.model import load_model as network
    from lmkit.tokenizer import Tokenizer

    return Loaded(checkpoint, network(checkpoint, options.device, options.precision, options.quantize),
                  Tokenizer.from_artifact(checkpoint.tokenizer_path))


@dataclass
class Inputs:
    """What generate answers: the texts, the records the outputs start from and their names in messages."""

    texts: list[str]
    records: list[dict[str, Any]]        # the JSONL record, or {field: text}
    names: list[str]                     # how messages call each input ("prompts.jsonl line 3")
    jsonl: bool = False
    pairs: list[str] | None = None       # a pair classifier's second texts; None otherwise
    contexts: list[str] | None = None    # a question-answering model's contexts (texts: the questions)
    conversations: list[list[dict[str, str]]] | None = None  # a chat model's (texts: each one's last user turn)


@dataclass
class EvalPlan:
    """What ``lmkit evaluate`` decided before any compute: the evaluation, its inputs and its gate."""

    config: EvaluateConfig
    checkpoint: Checkpoint
    spec: TaskSpec
    evaluation: Evaluation | None        # None: only harness tasks
    metrics: list[str]
    dataset: artifacts.Artifact | None
    split: str | None
    files: list[str]
    window: int
    stride: int
    conditions: list[Condition]
    harness_manager: Any
    input_files: list[dict[str, Any]]
    recipe: str
    other_report: dict[str, Any] | None
    notes: list[str]

    @property
    def where(self) -> str:
        """The evaluated data, in messages."""
        return str(self.dataset.path) if self.dataset is not None else ", ".join(self.files)


@dataclass(frozen=True)
class Baseline:
    """A model without a transformer, scored beside the checkpoint (``evaluate --baseline``)."""

    run: Callable[[EvalPlan, Tokenizer, Any, list[dict[str, Any]]], tuple[dict[str, float], dict[str, Any]]]
    trains: bool = True                          # learns from the dataset artifact's train split
    check: Callable[[], None] | None = None      # refuses before any compute (a missing extra)
    preprocess: str = ""                         # what its dataset needs from `lmkit preprocess`, in refusals


@dataclass(frozen=True)
class Evaluation:
    """One way ``lmkit evaluate`` measures a kind of model: ``--task NAME``."""

    name: str
    metrics: tuple[str, ...]                     # what it reports; --metrics chooses among them
    reads: str                                   # DOCUMENTS or JSONL
    run: Callable[[EvalPlan, Inference, Tokenizer, Any], TaskOutcome]
    needs: str                                   # what a checkpoint must be for it, in refusals
    make: str | None = None                      # how to make such a checkpoint, in refusals
    load: Callable[[EvalPlan, Tokenizer], Any] | None = None   # its input, before the model (default: documents)
    check: Callable[[EvalPlan], None] | None = None            # more checks before any compute
    baseline: Baseline | None = None
    no_baseline: str | None = None               # why --baseline is refused, when more can be said than "none"
    flags: tuple[str, ...] = ()                  # the evaluate flags it reads, besides those every one reads
    label: str | None = None                     # how messages name it (default: --task NAME)
    own_model: bool = False                      # generation loads its own model: no scoring model is loaded
    # The metrics its flags name, besides ``metrics`` (pass-at-k's pass_at_K for each --k); () when they do not parse.
    metrics_for: Callable[[EvaluateConfig], tuple[str, ...]] | None = None

    @property
    def called(self) -> str:
        return self.label or f"--task {self.name}"

    def offered(self, config: EvaluateConfig | None) -> tuple[str, ...]:
        """The metrics it reports for ``config``'s flags (None: the fixed ones only)."""
        named = self.metrics_for(config) if self.metrics_for is not None and config is not None else ()
        return (*named, *self.metrics)


@dataclass(frozen=True)
class Generation:
    """How ``lmkit generate`` (and its interactive loop) reads inputs for a kind of model and shows answers."""

    field: str                                   # the JSONL field (and output record key) of an input
    answer: Callable[[Any, Inputs, GenerateConfig, Callable[[str], None] | None], list[dict[str, Any]]]
    render: Callable[[list[dict[str, Any]], dict[str, Any]], None]
    flags: tuple[str, ...] = ()                  # the generate flags only this kind reads (sampling, candidates)
    other_field: str | None = None               # also accepted for the input ("text" for "prompt")
    whole_file: bool = False                     # a prompt file is one input (text), not one per line
    streams: bool = False                        # one answer can stream to the terminal as it is generated
    read: Callable[[GenerateConfig, Checkpoint], Inputs | None] | None = None  # its own inputs (questions, pairs)
    interactive: Callable[[Checkpoint], str | None] | None = None  # what refuses --interactive (None: fine)


@dataclass(frozen=True)
class Route:
    """One HTTP endpoint of ``lmkit serve``: a POST of a ``request`` body (a pydantic model) to ``path``."""

    path: str
    request: type
    handler: Callable[[Any, Any], Awaitable[Any]]  # (the validated body, serving.app.Call) -> JSON or a stream


@dataclass(frozen=True)
class TaskSpec:
    name: str                                    # the kind, as /health and messages name it
    summary: str                                 # what such a model is, in messages: "a classifier"
    serves: Callable[[Checkpoint], bool]         # the checkpoints of this kind
    evaluations: tuple[Evaluation, ...]          # the first is evaluate's --task auto
    load: Callable[[Checkpoint, LoadOptions], Any]  # the model, ready to answer (generate and serve)
    generation: Generation
    endpoints: tuple[str, ...]                   # the paths its routes serve, for other kinds' refusals
    routes: Callable[[Any], list[Route]]         # (serving.app.Server) -> its routes; imports the serve extra
    lm_head: bool = True                         # has a language-model head (perplexity, the harness)
    harness: bool = False                        # lm-evaluation-harness can evaluate it (a causal LM)
    decodes: bool = False                        # generates text token by token (a Generator): batched decoding

    def evaluation(self, name: str) -> Evaluation | None:
        return next((e for e in self.evaluations if e.name == name), None)


TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is registered twice")  # a bug, not a user error
    TASKS[spec.name] = spec
    return spec


def for_checkpoint(checkpoint: Checkpoint) -> TaskSpec:
    """The kind of model ``checkpoint`` holds; refused, with the kinds lmkit knows, when it is none of them."""
    found = [spec for spec in TASKS.values() if spec.serves(checkpoint)]
    if len(found) > 1:
        raise ValueError(f"{checkpoint.path}: served by several tasks ({', '.join(s.name for s in found)})")  # a bug
    if not found:
        kinds = "; ".join(f"{spec.name}: {spec.summary}" for spec in TASKS.values())
        raise UserError(f"{checkpoint.path}: a {checkpoint.model_config.arch} checkpoint with objective "
                        f"{checkpoint.objective!r} is not a kind generate knows ({kinds})")
    return found[0]


def evaluation_names() -> list[str]:
    """Every ``evaluate --task`` name, in registration order."""
    return list(dict.fromkeys(e.name for spec in TASKS.values() for e in spec.evaluations))


def metric_names(config: EvaluateConfig | None = None) -> list[str]:
    """Every metric some evaluation reports (with ``config``: those its flags name too, pass-at-k's --k)."""
    return list(dict.fromkeys(m for spec in TASKS.values() for e in spec.evaluations for m in e.offered(config)))


# -- helpers the task modules share ---------------------------------------------------------------------------

def read_examples(plan: EvalPlan, read: Callable[[str, int], list[Any]]) -> list[Any]:
    """The examples of the plan's JSONL files, ``read(path, at most)`` each (0: all), up to ``--limit``."""
    limit, items = plan.config.limit, []
    for path in plan.files:
        items += read(path, limit - len(items) if limit else 0)
        if limit and len(items) >= limit:
            break
    if not items:
        raise UserError(f"{', '.join(plan.files)}: no examples to evaluate (the files are empty)")
    return items


def read_documents(plan: EvalPlan, tokenizer: Tokenizer, labeled: bool = False):
    """A DOCUMENTS evaluation's input: the dataset's split, or the raw files tokenized with the checkpoint's
    tokenizer (``labeled``: with their gold labels, and second texts when --text-pair-field names them)."""
    from lmkit.data import sources
    from lmkit.evaluation import inputs

    config = plan.config
    if plan.dataset is not None:
        return inputs.from_dataset(plan.dataset, plan.split, config.limit)
    options = sources.ReadOptions(split_by=config.split_by, text_field=config.text_field,
                                  text_column=config.text_column, label_field=config.label_field if labeled else None,
                                  text_pair_field=config.text_pair_field if labeled else None)
    return inputs.from_files(plan.files, tokenizer, options, config.limit)


def article(noun: str) -> str:
    """``noun`` with its indefinite article: "a classifier", "an instruction-tuned model"."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"
