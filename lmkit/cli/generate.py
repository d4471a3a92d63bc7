"""``lmkit generate``: text, [MASK] candidates, labels or answers from a checkpoint; streamed, batched or
interactive. How each kind of model shows its answers is its task's (lmkit.tasks)."""

from __future__ import annotations

import json

from lmkit.cli._util import config_command, report_user_error
from lmkit.errors import UserError
from lmkit.progress import reporter
from lmkit.stages.generate_config import GenerateConfig


def render(result) -> None:
    if result is None or result.output is not None:  # interactive mode printed as it went; a file was written
        return
    if result.jsonl:
        for record in result.records:
            reporter.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif result.streamed:
        reporter.write("\n")
    else:
        result.spec.generation.render(result.records, result.settings)


def interactive(config: GenerateConfig) -> None:
    """A prompt loop on the terminal: each line is answered as soon as it is entered; Ctrl-C stops an
    answer, Ctrl-D or 'exit' ends the loop."""
    from lmkit.stages import generate
    from lmkit.tasks.base import Inputs

    try:
        import readline  # noqa: F401 (line editing and history for input())
    except ImportError:
        pass
    session = generate.open_session(config)
    generation = session.spec.generation
    refusal = generation.interactive(session.checkpoint) if generation.interactive else None
    if refusal is not None:
        raise UserError(f"--interactive: {config.checkpoint} {refusal}")
    settings = {"echo": config.echo, "num_samples": config.num_samples}
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
        given = Inputs([line], [{generation.field: line}], ["prompt"])
        try:
            if generation.streams and config.num_samples == 1:
                if config.echo:
                    reporter.write(line)
                session.answer(given, stream=reporter.write)
                reporter.write("\n")
            else:
                generation.render(session.answer(given), settings)
        except UserError as exc:  # e.g. a line without [MASK]: say so, and wait for the next one
            report_user_error(exc)
        except KeyboardInterrupt:  # Ctrl-C stops this answer; at the prompt it ends the session
            reporter.write("\n")
            reporter.info("(stopped)")


def run(config: GenerateConfig):
    from lmkit.stages import generate  # torch loads only for commands that need it

    if config.interactive:
        interactive(config)
        return None
    return generate.run(config, stream=reporter.write)


config_command(
    "generate", GenerateConfig,
    help="Use a checkpoint: continue text (causal LM; SFT models apply their prompt template), reply to "
         "conversations (chat models: --messages FILE, or a prompt as one user turn), fill [MASK] "
         "(BERT), predict labels (classifiers, of texts or of pairs with --text-pair), or answer --question from "
         "--context (question-answering models). The prompt comes from the argument, --prompt-file, --input "
         "(JSONL, batched) or stdin; a lone completion streams as it is generated. A prompt longer than the "
         "model's context keeps its end, with a warning (--truncate error refuses it).\n\n"
         "Example: lmkit generate runs/gpt/final \"The for statement\" --temperature 0.8 --top-k 50",
    render=render, run=run)
