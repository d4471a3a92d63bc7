"""The flag reference (docs/reference/) is what `--help` shows: generated from the same options, and a test
fails when a page is stale or a command's flags and the reference part ways."""

from pathlib import Path

import pytest

from lmkit.cli import _util, reference

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "reference"


def test_reference_pages_are_current():
    problems = reference.stale(PAGES)
    assert not problems, "\n".join(problems) + "\nrun `make docs` (python -m lmkit.cli.reference) and commit the pages"


def test_a_stale_missing_or_extra_page_is_reported(tmp_path):
    """The positive control: pages written now are current; an edited, a deleted and an unknown page are not."""
    reference.write(tmp_path)
    assert reference.stale(tmp_path) == []
    edited = tmp_path / "preprocess.md"
    edited.write_text(edited.read_text().replace(" |\n", " (edited by hand) |\n", 1))
    (tmp_path / "verify.md").unlink()
    (tmp_path / "retired.md").write_text("# lmkit retired\n")
    problems = reference.stale(tmp_path)
    assert len(problems) == 3
    assert any("preprocess.md: stale" in p for p in problems) and any("verify.md: missing" in p for p in problems)
    assert any("retired.md: no such command" in p for p in problems)
    assert reference.main([str(tmp_path), "--check"]) == 1
    assert reference.main([str(tmp_path)]) == 0 and reference.stale(tmp_path) == []


def test_every_command_has_a_page_with_every_flag():
    """Each command's rows name exactly the options and arguments of the command typer builds for --help."""
    built = reference.click_commands()
    documented = {ref.path: ref for ref in reference.commands()}
    assert set(documented) == set(built) and len(built) >= 19
    for path, command in built.items():
        flags = {name for param in command.params if param.name != "help" for name in reference.click_row(param).names}
        assert {name for row in documented[path].rows for name in row.names} == flags, path


@pytest.mark.parametrize("name", sorted(_util.CONFIG_COMMANDS))
def test_config_command_rows_equal_what_help_shows(name):
    """A config command's rows come from its dataclass; its --help from the typer parameters built from the same
    fields: the flag names, the help text and the default shown must be equal, row for row."""
    ref = next(r for r in reference.commands() if r.path == (name,))
    built = [reference.click_row(p) for p in reference.click_commands()[(name,)].params if p.name != "help"]
    assert [row.names for row in ref.rows] == [row.names for row in built]
    assert [row.help for row in ref.rows] == [row.help for row in built]
    options = [(a.default, b.default) for a, b in zip(ref.rows, built, strict=True) if a.names[0].startswith("-")]
    assert all(a == b for a, b in options), [pair for pair in options if pair[0] != pair[1]]
    assert any(row.help for row in ref.rows) and all(row.help for row in ref.rows), "every option has its help"


def test_help_text_reaches_the_page_escaped():
    """Markdown in help text (pipes, angle brackets, emphasis) cannot break a table or hide text."""
    page = reference.page("x", [reference.CommandReference(("x",), "Run *it*.", (
        reference.Row(("--a",), "text", "<pad>", "Splits a|b, keeps <s> and __init__."),))])
    row = next(line for line in page.splitlines() if line.startswith("| `--a`"))
    assert row.count(" | ") == 3 and "a\\|b" in row and "&lt;s&gt;" in row and "\\_\\_init\\_\\_" in row
    assert "Run \\*it\\*." in page
    # A default with line breaks (sft's --template) stays in its row, the breaks shown as \n.
    page = reference.page("x", [reference.CommandReference(("x",), "", (
        reference.Row(("--t",), "text", "### Q:\n{prompt}\n\n### A:\n", "The template."),))])
    row = next(line for line in page.splitlines() if line.startswith("| `--t`"))
    assert row == "| `--t` | text | `### Q:\\n{prompt}\\n\\n### A:\\n` | The template. |"


def test_a_positional_list_with_a_default_is_not_shown_required():
    """evaluate's DATA and pretrain's DATASET have defaults (empty lists): the reference showed them "required"."""
    rows = {r.path: r.rows for r in reference.commands()}
    for command, name in ((("evaluate",), "DATA"), (("pretrain",), "DATASET")):
        row = next(row for row in rows[command] if row.names == (name,))
        assert row.default != "required", (command, name)
    assert next(row for row in rows[("finetune",)] if row.names == ("BASE",)).default == "required"
