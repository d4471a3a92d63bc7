"""The examples in the README and docs/ that are marked runnable run, against a miniature of the demo.

A shell block preceded by ``<!-- runnable -->`` (or ``<!-- runnable exit=N -->``: its last command must exit N)
is run line by line, block after block in the order of its page, in a fresh directory that holds ``demo/`` (the
demo's layout, made from the session's tiny corpus, datasets and checkpoints) and ``examples/``. ``lmkit`` lines
run in-process (tests/conftest.py: invoke_lmkit); other lines, and those with pipes or redirections, run in bash
with this environment's ``lmkit`` first on the PATH. Every other line must exit 0. The README's relative links
are checked here too; the site build (``mkdocs build --strict`` in ``make test``) checks the pages' links.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import invoke_lmkit, labeled_records, paragraphs, preprocess_labeled

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*runnable(?:\s+exit=(\d+))?\s*-->\s*$")
FENCE = re.compile(r"^```(sh|bash|shell|console)\s*$")
SHELL_SYNTAX = re.compile(r"[|<>;&`$]")  # pipes, redirections, substitutions: bash runs the line


@dataclass
class Block:
    page: str
    line: int  # of the fence, 1-based
    commands: list[str]
    exit_code: int


def pages() -> list[Path]:
    """The README and every page of docs/, but the generated reference."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [p for p in found if "reference" not in p.relative_to(ROOT).parts]


def blocks(path: Path) -> list[Block]:
    """The runnable blocks of a page, in order; a marker not followed by a shell block is an error."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    found = []
    for index, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        where = f"{page}:{index + 1}"
        if index + 1 >= len(lines) or not FENCE.match(lines[index + 1].strip()):
            raise AssertionError(f"{where}: a runnable marker must be followed at once by a ```sh block")
        end = next((j for j in range(index + 2, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{where}: the block is not closed")
        commands, pending = [], ""
        for raw in lines[index + 2:end]:
            text = pending + raw.strip()
            if text.endswith("\\"):
                pending = text[:-1] + " "
                continue
            pending = ""
            if text and not text.startswith("#"):
                commands.append(text)
        if not commands:
            raise AssertionError(f"{where}: an empty runnable block")
        found.append(Block(page, index + 2, commands, int(match.group(1) or 0)))
    return found


RUNNABLE = {str(p.relative_to(ROOT)): blocks(p) for p in pages()}


def test_pages_have_runnable_examples():
    """The marker is found (a control: a regex that matched nothing would pass every page vacuously), on every
    stage's page."""
    with_blocks = {page for page, found in RUNNABLE.items() if found}
    for page in ("README.md", "docs/preprocess.md", "docs/pretrain.md", "docs/finetune.md", "docs/evaluate.md",
                 "docs/generate.md", "docs/interop.md", "docs/inspect.md", "docs/artifacts.md", "docs/errors.md"):
        assert page in with_blocks, page
    assert sum(len(found) for found in RUNNABLE.values()) >= 20


def test_a_marker_without_a_shell_block_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable -->\nlmkit info x\n")
    with pytest.raises(AssertionError, match="must be followed at once"):
        blocks(page)


# -- the miniature demo ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def demo_miniature(tmp_path_factory, dataset, gpt, bert, instructions, qa_file) -> Path:
    """``demo/`` as `make demo` lays it out, from the session's tiny artifacts: corpus/ (topics, labeled
    docstrings, instructions, QA, 40 records of each arithmetic set), data/ and gpt/ and bert/ (the session's
    dataset and runs, linked), labeled/ (50/10/40 split as the demo's), classifier/ and sft/ (finetuned for a few
    steps). Read-only for the examples."""
    from lmkit.config import resolve
    from lmkit.data.demo_arithmetic import arithmetic_sets
    from lmkit.stages import finetune
    from lmkit.stages.finetune_config import FinetuneConfig

    demo = tmp_path_factory.mktemp("docs-demo") / "demo"
    corpus = demo / "corpus"
    (corpus / "topics").mkdir(parents=True)
    (corpus / "stdlib").mkdir()
    texts = paragraphs()
    (corpus / "topics" / "docs.txt").write_text("\n\n".join(texts[:150]) + "\n")
    (corpus / "stdlib" / "modules.txt").write_text("\n\n".join(texts[150:]) + "\n")
    (corpus / "docstrings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labeled_records()))
    shutil.copy(instructions, corpus / "instructions.jsonl")
    shutil.copy(qa_file, corpus / "qa.jsonl")
    for name, records in arithmetic_sets().items():  # the demo's arithmetic sets, cut small
        (corpus / name).write_text("".join(json.dumps(r) + "\n" for r in records[:40]))
    (demo / "data").symlink_to(dataset)
    (demo / "gpt").symlink_to(gpt.parent)
    (demo / "bert").symlink_to(bert.parent)
    labeled = preprocess_labeled(dataset, demo / "labeled", labeled_records(), "--val-fraction", "0.1",
                                 "--test-fraction", "0.4")
    common = {"base": str(gpt), "max_steps": 4, "micro_batch": 8, "seq_len": 128, "eval_every": 0,
              "precision": "fp32"}
    finetune.run(resolve(FinetuneConfig, {}, {**common, "data": str(labeled), "out": str(demo / "classifier")}))
    finetune.run(resolve(FinetuneConfig, {}, {**common, "data": str(corpus / "instructions.jsonl"),
                                               "out": str(demo / "sft")}))
    (demo / "labeled.jsonl").unlink(missing_ok=True)  # preprocess_labeled's source file, not a demo artifact
    return demo


def run_line(command: str, cwd: Path) -> tuple[int, str]:
    """(exit code, output) of one line of a block."""
    if command.startswith("lmkit ") and not SHELL_SYNTAX.search(command):
        result = invoke_lmkit(*shlex.split(command)[1:], cwd=cwd)
    else:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        result = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True,
                                env={**os.environ, "PATH": path, "NO_COLOR": "1"})
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("page", [page for page, found in RUNNABLE.items() if found])
def test_runnable_examples_run(page, demo_miniature, tmp_path):
    (tmp_path / "demo").symlink_to(demo_miniature)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    for block in RUNNABLE[page]:
        for position, command in enumerate(block.commands):
            expected = block.exit_code if position == len(block.commands) - 1 else 0
            code, output = run_line(command, tmp_path)
            assert code == expected, (f"{block.page}:{block.line}: `{command}` exited {code}, not {expected}:\n"
                                      f"{output[-3000:]}")


# -- links ---------------------------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def readme_links(text: str) -> list[str]:
    return [target for target in LINK.findall(text) if "://" not in target and not target.startswith("mailto:")]


def test_readme_links_point_to_files_and_headings():
    """The README is outside the site, so the strict site build does not see its links: they are checked here."""
    links = readme_links((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(links) >= 10  # the control: the pattern finds the README's links
    for target in links:
        file, _, anchor = target.partition("#")
        path = ROOT / file
        assert path.is_file(), f"README.md links to {target}: no such file"
        if anchor:
            headings = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).strip().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md links to {target}: no such heading"


def test_a_broken_readme_link_is_found():
    assert readme_links("see [x](docs/nowhere.md) and [y](https://example.org)") == ["docs/nowhere.md"]
    assert not (ROOT / "docs/nowhere.md").exists()
