"""``lmkit generate``: text, [MASK] candidates or labels from a checkpoint; streamed, batched or interactive."""

from __future__ import annotations

import json
from typing import Any

from rich.rule import Rule
from rich.table import Table

from lmkit.cli._util import config_command, report_user_error
from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.stages.generate_config import GenerateConfig


def _write(text: str) -> None:
    """Raw text to stdout at once (no rich markup, emoji codes or wrapping): a completion as it streams."""
    reporter.out.file.write(text)
    reporter.out.file.flush()


def show_records(mode: str, records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Results for a reader: completions as plain text, candidates and labels as tables."""
    source = settings["field"]
    for number, record in enumerate(records, 1):
        text = record.get(source, record.get("text" if source == "prompt" else "prompt", ""))
        if mode == "text":
            completions = record["completions"] if "completions" in record else [record["completion"]]
            for sample, completion in enumerate(completions, 1):
                if len(completions) > 1 or len(records) > 1:
                    label = f"prompt {number}, " if len(records) > 1 else ""
                    reporter.out.print(Rule(f"{label}sample {sample}", align="left"))
                _write((text if settings["echo"] else "") + completion + "\n")
        elif mode == "qa":  # the answer alone for one question; a table for several
            if len(records) == 1:
                _write(record["answer"] + "\n")
                continue
            if number == 1:
                table = Table(title_justify="left")
                for column, justify in (("question", "left"), ("answer", "left"), ("score", "right")):
                    table.add_column(column, justify=justify, overflow="fold")
            score = "" if record["score"] is None else f"{record['score']:.2f}"
            table.add_row(record["question"], record["answer"], score)
            if number == len(records):
                reporter.out.print(table)
        elif mode == "fill-mask":
            for index, candidates in enumerate(record["candidates"], 1):
                which = f" ([MASK] {index} of {len(record['candidates'])})" if len(record["candidates"]) > 1 else ""
                table = Table(title=f"{text}{which}", title_justify="left")
                for column, justify in (("token", "left"), ("probability", "right"), ("text", "left")):
                    table.add_column(column, justify=justify, overflow="fold")
                for candidate in candidates:
                    table.add_row(candidate["token"], f"{candidate['probability']:.4f}", candidate["text"])
                reporter.out.print(table)
        else:
            pair = [record["text_pair"]] if settings.get("pairs") else []  # a pair classifier's second text
            if number == 1:
                table = Table(title_justify="left")
                table.add_column("text", overflow="fold", ratio=3)
                if pair:
                    table.add_column("text_pair", overflow="fold", ratio=3)
                table.add_column("label")
                for label in record["probabilities"]:
                    table.add_column(f"p({label})", justify="right")
            table.add_row(text, *pair, record["label"], *(f"{p:.4f}" for p in record["probabilities"].values()))
            if number == len(records):
                reporter.out.print(table)


def render(result) -> None:
    if result is None or result.output is not None:  # interactive mode printed as it went; a file was written
        return
    if result.jsonl:
        for record in result.records:
            _write(json.dumps(record, ensure_ascii=False) + "\n")
    elif result.streamed:
        _write("\n")
    else:
        show_records(result.mode, result.records, result.settings)


def interactive(config: GenerateConfig) -> None:
    """A prompt loop on the terminal: each line is answered as soon as it is entered; Ctrl-C stops an
    answer, Ctrl-D or 'exit' ends the loop."""
    from lmkit.stages import generate

    try:
        import readline  # noqa: F401 (line editing and history for input())
    except ImportError:
        pass
    session = generate.open_session(config)
    if session.mode == "qa":
        raise UserError(f"--interactive: {config.checkpoint} answers a question from a context; give --question "
                        "with --context or --context-file, or --input JSONL records")
    if session.checkpoint.head and session.checkpoint.head.get("pairs"):
        raise UserError(f"--interactive: {config.checkpoint} classifies pairs of texts; give PROMPT with --text-pair, "
                        "or --input JSONL records with \"text\" and \"text_pair\"")
    field = generate.INPUT_FIELD[session.mode]
    reporter.info("type a prompt and press Enter; Ctrl-D or 'exit' ends")
    while True:
        reporter.err.print("> ", end="", markup=False)
        try:
            line = input()
        except EOFError:
            reporter.err.print()
            return
        if line.strip() in ("exit", "quit"):
            return
        if not line.strip():
            continue
        inputs = generate.Inputs([line], [{field: line}], ["prompt"])
        try:
            if session.mode == "text" and config.num_samples == 1:
                if config.echo:
                    _write(line)
                session.answer(inputs, stream=_write)
                _write("\n")
            else:
                show_records(session.mode, session.answer(inputs),
                             {"echo": config.echo, "num_samples": config.num_samples, "field": field})
        except UserError as exc:  # e.g. a line without [MASK]: say so, and wait for the next one
            report_user_error(exc)
        except KeyboardInterrupt:  # Ctrl-C stops this answer; at the prompt it ends the session
            _write("\n")
            reporter.info("(stopped)")


def run(config: GenerateConfig):
    from lmkit.stages import generate  # torch loads only for commands that need it

    if config.interactive:
        interactive(config)
        return None
    return generate.run(config, stream=_write)


config_command(
    "generate", GenerateConfig,
    help="Use a checkpoint: continue text (causal LM; SFT models apply their prompt template), fill [MASK] "
         "(BERT), or predict labels (classifiers). The prompt comes from the argument, --prompt-file, --input "
         "(JSONL, batched) or stdin; a lone completion streams as it is generated. A prompt longer than the "
         "model's context keeps its end, with a warning (--truncate error refuses it).\n\n"
         "Example: lmkit generate runs/gpt/final \"The for statement\" --temperature 0.8 --top-k 50",
    render=render, run=run)
