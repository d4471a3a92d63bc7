"""``lmkit demo-corpus``: write the built-in demo corpus (Python's bundled documentation)."""

from __future__ import annotations

from pathlib import Path

import typer

from lmkit.cli._util import app, handle_errors
from lmkit.data.demo import write_demo_corpus
from lmkit.errors import UserError
from lmkit.progress import reporter


@app.command("demo-corpus")
@handle_errors
def demo_corpus(out: Path = typer.Option(..., "--out", "-o", help="Directory to write the corpus into.")) -> None:
    """Write a small corpus from Python's own documentation: topics/*.txt (language reference) and
    docstrings.jsonl (standard-library docstrings labeled module/class/function), instructions.jsonl
    (instruction/response pairs made from them), chats.jsonl and chats-test.jsonl (multi-turn conversations
    about them, for chat finetuning), pairs.jsonl and pairs-test.jsonl (a
    docstring's first line with its rest or another's, labeled match/mismatch, for pair classification),
    qa.jsonl and qa-test.jsonl (extractive questions on pages of
    them, SQuAD's layout), arithmetic*.jsonl (two-digit additions for SFT, preference tuning and RL with a checked
    answer) and stdlib/*.txt (the other modules' docstrings, unlabeled,
    for pretraining). No download."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory (--out)")
    stats = write_demo_corpus(out)
    reporter.out.print(f"{out}: {stats['topics']} topic files, {stats['docstrings']} labeled docstrings, "
                       f"{stats['stdlib_modules']} stdlib docstring files, {stats['text_pairs']} text pairs, "
                       f"{stats['conversations']} conversations, "
                       f"{stats['qa_questions']} QA questions, {stats['arithmetic_problems']:,} arithmetic problems, "
                       f"{stats['bytes']:,} bytes ({stats['files_changed']} files written)", markup=False)
