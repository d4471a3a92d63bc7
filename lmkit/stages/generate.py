"""``lmkit generate``: use a checkpoint. Text from a causal or SFT model, [MASK] candidates from a BERT,
labels from a classifier, answers from a question-answering (span) model; prompts from an argument, a file,
stdin or JSONL records (questions from --question with --context or --context-file, or JSONL records).

Every input is read and checked before the model loads. Results go to stdout (JSONL when the input
was JSONL) or, with --output, to a JSONL file written atomically; messages go to stderr. Nothing
else is written: generating makes no artifact.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lmkit.data.jsonl import json_objects, read_text
from lmkit.errors import UserError
from lmkit.generation.classify import classify, reads_pairs
from lmkit.generation.fill_mask import fill_mask
from lmkit.generation.generator import Generator
from lmkit.generation.model import CLASSIFY, FILL_MASK, QA, TEXT, checkpoint_mode, compile_choice, load_model
from lmkit.generation.qa import answer_questions, one_question, questions_of_jsonl
from lmkit.data.qa_windows import QASettings
from lmkit.progress import reporter
from lmkit.stages.generate_config import FILL_MASK_FLAGS, TEXT_FLAGS, GenerateConfig
from lmkit.tokenizer import Tokenizer
from lmkit.checkpoint import Checkpoint, read_checkpoint

# The JSONL field holding the input, by mode; the other name is accepted too.
INPUT_FIELD = {TEXT: "prompt", FILL_MASK: "text", CLASSIFY: "text", QA: "question"}
PAIR_FIELD = "text_pair"  # a pair classifier's second text (JSONL; --text-pair; serve's classify field)


@dataclass
class Inputs:
    texts: list[str]
    records: list[dict[str, Any]]  # what each output record starts from: the JSONL record, or {field: text}
    names: list[str]               # how messages call each input ("prompts.jsonl line 3")
    jsonl: bool = False
    pairs: list[str] | None = None  # a pair classifier's second texts; None otherwise
    contexts: list[str] | None = None  # a question-answering model's contexts (texts: the questions)


@dataclass
class GenerateResult:
    mode: str                      # TEXT, FILL_MASK or CLASSIFY
    records: list[dict[str, Any]]  # one per input: its fields plus "completion(s)", "candidates" or "label"
    output: Path | None = None     # the JSONL file written, if any
    jsonl: bool = False            # the input was JSONL: print the records as JSONL
    streamed: bool = False         # the completion was already printed as it was generated
    settings: dict[str, Any] = field(default_factory=dict)  # echo, num_samples, field: how to show the records


# -- reading the inputs ----------------------------------------------------------------------------

def _read_text(path: str) -> str:
    """A prompt or input file's text; ``-`` is stdin."""
    if path != "-":
        return read_text(path)
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"stdin: not UTF-8 text (byte {exc.start})") from None


def _from_text(text: str, where: str, mode: str) -> Inputs:
    """A prompt file or stdin: one prompt (text generation) or one text per non-blank line."""
    key = INPUT_FIELD[mode]
    if mode == TEXT:
        text = text.removesuffix("\n").removesuffix("\r")  # the newline an editor or `echo` adds
        return Inputs([text], [{key: text}], [where])
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    return Inputs([line for _, line in lines], [{key: line} for _, line in lines],
                  [f"{where}:{n}" for n, _ in lines])


def _from_jsonl(path: str, mode: str, pairs: bool) -> Inputs:
    """``pairs``: the checkpoint is a pair classifier, and each record needs a "text_pair" too."""
    key = INPUT_FIELD[mode]
    other = "text" if key == "prompt" else "prompt"
    inputs = Inputs([], [], [], jsonl=True, pairs=[] if pairs else None)
    for where, record in json_objects(_read_text(path), path, f"a JSON object with a \"{key}\" field"):
        value = record.get(key, record.get(other))
        if not isinstance(value, str):
            raise UserError(f"{where}: needs a \"{key}\" field holding a string")
        if pairs and not isinstance(record.get(PAIR_FIELD), str):
            raise UserError(f"{where}: needs a \"{PAIR_FIELD}\" field holding a string (the classifier reads pairs "
                            "of texts)")
        if not pairs and mode == CLASSIFY and PAIR_FIELD in record:
            raise UserError(f"{where}: has a \"{PAIR_FIELD}\" field, but the classifier reads single texts (it was "
                            "not finetuned on pairs)")
        inputs.texts.append(value)
        inputs.records.append(record)
        inputs.names.append(where)
        if pairs:
            inputs.pairs.append(record[PAIR_FIELD])
    return inputs


def read_inputs(config: GenerateConfig, mode: str, pairs: bool = False) -> Inputs:
    """The texts to answer, from PROMPT, --prompt-file, --input or stdin; each checked for emptiness. ``pairs``:
    the checkpoint is a pair classifier, which reads PROMPT with --text-pair, or --input records."""
    if mode == QA or config.question is not None:
        return _questions(config, mode)
    if config.text_pair is not None and not pairs:
        raise UserError(f"--text-pair: {config.checkpoint} " + ("classifies single texts (it was not finetuned on "
                        "pairs)" if mode == CLASSIFY else f"is a {mode} model, not a classifier"))
    if pairs and config.input is None and (config.prompt is None or config.text_pair is None):
        given = "PROMPT alone" if config.prompt is not None else ("--prompt-file" if config.prompt_file else "stdin")
        raise UserError(f"{given}: {config.checkpoint} classifies pairs of texts; give PROMPT with --text-pair, or "
                        f"--input JSONL records with \"text\" and \"{PAIR_FIELD}\"")
    if config.prompt is not None:
        inputs = Inputs([config.prompt], [{INPUT_FIELD[mode]: config.prompt}], ["PROMPT"])
        if pairs:
            inputs.records[0][PAIR_FIELD] = config.text_pair
            inputs.pairs = [config.text_pair]
    elif config.input is not None:
        inputs = _from_jsonl(config.input, mode, pairs)
    elif config.prompt_file is not None:
        where = "stdin" if config.prompt_file == "-" else config.prompt_file
        inputs = _from_text(_read_text(config.prompt_file), where, mode)
    elif sys.stdin.isatty():
        raise UserError("no prompt: give it as an argument, with --prompt-file or --input, pipe it to stdin, "
                        "or use --interactive")
    else:
        inputs = _from_text(_read_text("-"), "stdin", mode)
    if not inputs.texts:
        raise UserError(f"{config.input or config.prompt_file or 'stdin'}: no prompts in it")
    for name, text in zip(inputs.names, inputs.texts):
        if not text.strip():
            raise UserError(f"{name}: the prompt is empty (give text for the model to "
                            f"{'continue' if mode == TEXT else 'read'})")
    for name, text in zip(inputs.names, inputs.pairs or []):
        if not text.strip():
            raise UserError(f"{name}: the {PAIR_FIELD} is empty (give the pair's second text)")
    return inputs


def _questions(config: GenerateConfig, mode: str) -> Inputs:
    """A qa checkpoint's questions: --question with --context or --context-file, or --input JSONL records."""
    if mode != QA:
        raise UserError(f"--question: {config.checkpoint} is a {mode} model, not a question-answering one")
    if config.question is not None:
        if config.context_file is not None:
            where = "stdin" if config.context_file == "-" else config.context_file
            found = one_question(config.question, _read_text(config.context_file), where)
        else:
            found = one_question(config.question, config.context, "--context")
    elif config.input is not None:
        found = questions_of_jsonl(_read_text(config.input), config.input)
    else:
        given = "PROMPT" if config.prompt is not None else ("--prompt-file" if config.prompt_file else "no question")
        raise UserError(f"{given}: {config.checkpoint} answers questions from a context; give --question with "
                        "--context or --context-file, or --input JSONL records with \"question\" and \"context\"")
    return Inputs(found.questions, found.records, found.names, jsonl=config.input is not None,
                  contexts=found.contexts)


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

class Session:
    """A checkpoint's model loaded once, answering batches of texts (the interactive loop reuses it)."""

    def __init__(self, config: GenerateConfig, checkpoint: Checkpoint, new_tokens: int = 0):
        """``new_tokens``: the job's size (prompts x samples x --max-new-tokens; 0: unknown, interactive), which
        --compile auto weighs."""
        self.config, self.checkpoint = config, checkpoint
        self.mode = checkpoint_mode(checkpoint)
        quantize = None if config.quantize == "none" else config.quantize
        if self.mode == TEXT:
            compiled = compile_choice(config.compile, checkpoint, config.device, quantize, new_tokens)
            if compiled:
                reporter.info("torch.compile: the first tokens compile the model (seconds; cached for next time)")
            self.generator = Generator(checkpoint, config.device, config.precision, quantize,
                                       batch_size=config.batch_size, truncate=config.truncate, compile=compiled)
        else:
            self.tokenizer = Tokenizer.from_artifact(checkpoint.tokenizer_path)
            self.model = load_model(checkpoint, config.device, config.precision, quantize)

    def answer(self, inputs: Inputs, stream: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """The output records; ``stream`` receives a single completion's text as it is generated."""
        records = [dict(record) for record in inputs.records]
        if self.mode == FILL_MASK:
            found = fill_mask(self.model, self.tokenizer, inputs.texts, self.config.candidates,
                              self.config.batch_size, inputs.names)
            for record, per_mask in zip(records, found):
                record["candidates"] = [[c.to_dict() for c in candidates] for candidates in per_mask]
        elif self.mode == QA:
            settings = QASettings.from_head(self.checkpoint.qa)
            answers = answer_questions(self.model, self.tokenizer, settings, inputs.texts, inputs.contexts,
                                       self.config.batch_size)
            for record, answer in zip(records, answers):
                record.update(answer.to_dict())
        elif self.mode == CLASSIFY:
            predictions = classify(self.model, self.tokenizer, self.checkpoint.labels, inputs.texts,
                                   self.config.batch_size, inputs.names, self.checkpoint.head, inputs.pairs)
            for record, prediction in zip(records, predictions):
                record.update(prediction.to_dict())
        else:
            n = self.config.num_samples
            prompts = [text for text in inputs.texts for _ in range(n)]  # copy j: its own random stream
            names = [name for name in inputs.names for _ in range(n)]
            on_token = None if stream is None else (lambda _index, text: stream(text))
            completions = self.generator.generate(prompts, self.config.sampling(), on_token, names=names)
            for i, record in enumerate(records):
                if n == 1:
                    record["completion"] = completions[i]
                else:
                    record["completions"] = completions[i * n:(i + 1) * n]
        return records


def open_session(config: GenerateConfig, checkpoint: Checkpoint | None = None, new_tokens: int = 0) -> Session:
    """Load the checkpoint's model (``checkpoint``: already read) for a job of ``new_tokens`` (0: unknown);
    flags it ignores are reported."""
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint = checkpoint or read_checkpoint(config.checkpoint)
    mode = checkpoint_mode(checkpoint)
    unread = (() if mode == TEXT else TEXT_FLAGS) + (() if mode == FILL_MASK else FILL_MASK_FLAGS)
    ignored = config.changed_flags(unread)
    if ignored:
        reporter.warn(f"{', '.join(ignored)}: no effect on a {mode} checkpoint ({checkpoint.path})")
    return Session(config, checkpoint, new_tokens)


def run(config: GenerateConfig, stream: Callable[[str], None] | None = None) -> GenerateResult:
    """Answer the configured inputs. ``stream`` (e.g. a terminal writer) receives a lone completion's
    text as it is generated, the prompt first with --echo; the result then has streamed=True."""
    checkpoint = read_checkpoint(config.checkpoint)
    mode = checkpoint_mode(checkpoint)
    output = check_output(config)
    inputs = read_inputs(config, mode, reads_pairs(checkpoint.head))  # every input checked before the model loads
    session = open_session(config, checkpoint, len(inputs.texts) * config.num_samples * config.max_new_tokens)
    streaming = (stream is not None and mode == TEXT and len(inputs.texts) == 1 and config.num_samples == 1
                 and output is None and not inputs.jsonl)
    if streaming and config.echo:
        stream(inputs.texts[0])
    records = session.answer(inputs, stream if streaming else None)
    if output is not None:
        write_jsonl(output, records)
        reporter.info(f"{output}: {len(records)} record{'s' if len(records) != 1 else ''} written")
    return GenerateResult(mode, records, output, inputs.jsonl, streaming,
                          {"echo": config.echo, "num_samples": config.num_samples, "field": INPUT_FIELD[mode],
                           "pairs": inputs.pairs is not None})
