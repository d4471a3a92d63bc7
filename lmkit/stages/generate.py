"""``lmkit generate``: use a checkpoint. What a checkpoint does with its inputs (continue text, fill [MASK],
label texts or pairs, answer questions from a context) is its task's (lmkit.tasks); this stage reads and checks
every input before the model loads, runs the task, and writes or returns the records.

Results go to stdout (JSONL when the input was JSONL) or, with --output, to a JSONL file written atomically;
messages go to stderr. Nothing else is written: generating makes no artifact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lmkit import tasks
from lmkit.checkpoint import Checkpoint, read_checkpoint
from lmkit.devices import set_threads
from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.stages.generate_config import GenerateConfig
from lmkit.tasks.base import Inputs, LoadOptions, TaskSpec, article
from lmkit.tasks.inputs import read_inputs as read_plain_inputs


@dataclass
class GenerateResult:
    spec: TaskSpec                 # the kind of model that answered
    records: list[dict[str, Any]]  # one per input: its fields plus "completion(s)", "candidates", "label", "answer"
    output: Path | None = None     # the JSONL file written, if any
    jsonl: bool = False            # the input was JSONL: print the records as JSONL
    streamed: bool = False         # the completion was already printed as it was generated
    settings: dict[str, Any] = field(default_factory=dict)  # echo, num_samples: how to show the records


def read_inputs(config: GenerateConfig, spec: TaskSpec, checkpoint: Checkpoint) -> Inputs:
    """The inputs to answer, as the kind of model reads them; each checked before any model loads."""
    generation = spec.generation
    for name in ("messages", "system"):  # conversations: what a chat model's generation reads
        if getattr(config, name) is not None and name not in generation.flags:
            raise UserError(f"--{name}: {config.checkpoint} is {article(spec.summary)}, not a chat model (it has no "
                            "chat template; finetune one with --task chat)")
    if generation.read is not None:
        return generation.read(config, checkpoint)
    return read_plain_inputs(config, generation, spec.name)


def check_output(config: GenerateConfig) -> Path | None:
    if config.output is None:
        return None
    path = Path(config.output)
    if path.is_dir():
        raise UserError(f"--output {path}: is a directory; give a file name")
    if path.exists() and not config.force:
        raise UserError(f"--output {path}: exists; use --force to overwrite it")
    if not path.parent.is_dir():
        raise UserError(f"--output {path}: the directory {path.parent} does not exist")
    return path


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write records as JSONL next to ``path``, then rename: readers never see half a file."""
    handle = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False)
    try:
        with handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


# -- answering -------------------------------------------------------------------------------------

@dataclass
class Session:
    """A checkpoint's model loaded once, answering batches of inputs (the interactive loop reuses it)."""

    config: GenerateConfig
    checkpoint: Checkpoint
    spec: TaskSpec
    model: Any

    def answer(self, given: Inputs, stream: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """The output records; ``stream`` receives a single completion's text as it is generated."""
        return self.spec.generation.answer(self.model, given, self.config, stream)


def open_session(config: GenerateConfig, checkpoint: Checkpoint | None = None, new_tokens: int = 0) -> Session:
    """Load the checkpoint's model (``checkpoint``: already read) for a job of ``new_tokens`` (0: unknown, as an
    interactive session); flags its kind does not read are reported."""
    set_threads(config.threads)
    checkpoint = checkpoint or read_checkpoint(config.checkpoint)
    spec = tasks.for_checkpoint(checkpoint)
    specific = dict.fromkeys(name for other in tasks.TASKS.values() for name in other.generation.flags)
    ignored = config.changed_flags(tuple(name for name in specific if name not in spec.generation.flags))
    if ignored:
        reporter.warn(f"{', '.join(ignored)}: no effect on a {spec.name} checkpoint ({checkpoint.path})")
    quantize = None if config.quantize == "none" else config.quantize
    model = spec.load(checkpoint, LoadOptions(config.device, config.precision, quantize, config.batch_size,
                                              config.truncate, config.compile, new_tokens, config.start_token))
    return Session(config, checkpoint, spec, model)


def run(config: GenerateConfig, stream: Callable[[str], None] | None = None) -> GenerateResult:
    """Answer the configured inputs. ``stream`` (e.g. a terminal writer) receives a lone completion's
    text as it is generated, the prompt first with --echo; the result then has streamed=True."""
    checkpoint = read_checkpoint(config.checkpoint)
    spec = tasks.for_checkpoint(checkpoint)
    output = check_output(config)
    given = read_inputs(config, spec, checkpoint)  # every input checked before the model loads
    session = open_session(config, checkpoint, len(given.texts) * config.num_samples * config.max_new_tokens)
    streaming = (stream is not None and spec.generation.streams and len(given.texts) == 1
                 and config.num_samples == 1 and output is None and not given.jsonl)
    if streaming and config.echo:
        stream(given.texts[0])
    records = session.answer(given, stream if streaming else None)
    if output is not None:
        write_jsonl(output, records)
        reporter.info(f"{output}: {len(records)} record{'s' if len(records) != 1 else ''} written")
    return GenerateResult(spec, records, output, given.jsonl, streaming,
                          {"echo": config.echo, "num_samples": config.num_samples})
