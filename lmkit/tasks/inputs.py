"""What ``lmkit generate`` answers, read before any model loads: PROMPT, ``--prompt-file`` (one prompt, or one
text per line), ``--input`` JSONL records, or stdin, each input checked for emptiness. A kind of model with
inputs of its own (a pair classifier's pairs, a question-answering model's questions) reads them itself and
uses these for the rest."""

from __future__ import annotations

import sys

from lmkit.data.jsonl import json_objects, read_text
from lmkit.errors import UserError
from lmkit.tasks.base import Generation, Inputs


def text_of(path: str) -> str:
    """A prompt or input file's text; ``-`` is stdin."""
    if path != "-":
        return read_text(path)
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"stdin: not UTF-8 text (byte {exc.start})") from None


def _from_text(text: str, where: str, generation: Generation) -> Inputs:
    """A prompt file or stdin: one prompt (text generation) or one text per non-blank line."""
    key = generation.field
    if generation.whole_file:
        text = text.removesuffix("\n").removesuffix("\r")  # the newline an editor or `echo` adds
        return Inputs([text], [{key: text}], [where])
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    return Inputs([line for _, line in lines], [{key: line} for _, line in lines], [f"{where}:{n}" for n, _ in lines])


def from_jsonl(path: str, generation: Generation) -> Inputs:
    """Records holding the input in the kind's field (or its other name); every field is kept in the output."""
    key, other = generation.field, generation.other_field
    found = Inputs([], [], [], jsonl=True)
    for where, record in json_objects(text_of(path), path, f"a JSON object with a \"{key}\" field"):
        value = record.get(key, record.get(other) if other else None)
        if not isinstance(value, str):
            raise UserError(f"{where}: needs a \"{key}\" field holding a string")
        found.texts.append(value)
        found.records.append(record)
        found.names.append(where)
    return found


def read_inputs(config, generation: Generation, kind: str) -> Inputs:
    """The texts to answer from PROMPT, --prompt-file, --input or stdin (``kind`` names the model in refusals of
    flags it does not read)."""
    if config.question is not None:
        raise UserError(f"--question: {config.checkpoint} is a {kind} model, not a question-answering one")
    if config.text_pair is not None:
        raise UserError(f"--text-pair: {config.checkpoint} is a {kind} model, not a classifier")
    if config.prompt is not None:
        found = Inputs([config.prompt], [{generation.field: config.prompt}], ["PROMPT"])
    elif config.input is not None:
        found = from_jsonl(config.input, generation)
    elif config.prompt_file is not None:
        found = _from_text(text_of(config.prompt_file), "stdin" if config.prompt_file == "-" else config.prompt_file,
                           generation)
    elif sys.stdin.isatty():
        raise UserError("no prompt: give it as an argument, with --prompt-file or --input, pipe it to stdin, "
                        "or use --interactive")
    else:
        found = _from_text(text_of("-"), "stdin", generation)
    if not found.texts:
        raise UserError(f"{config.input or config.prompt_file or 'stdin'}: no prompts in it")
    for name, text in zip(found.names, found.texts, strict=True):
        if not text.strip():
            raise UserError(f"{name}: the prompt is empty (give text for the model to "
                            f"{'continue' if generation.whole_file else 'read'})")
    return found
