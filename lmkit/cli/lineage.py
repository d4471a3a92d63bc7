"""``lmkit lineage PATH``: the tree of parent artifacts back to the raw input files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from lmkit import artifacts
from lmkit.cli._util import app, handle_errors
from lmkit.progress import reporter


_SHOWN_FILES = 8


def _line(text: str) -> Text:
    """A tree label that is never wrapped or cut: paths are long, and a cut one is useless."""
    return Text(text, no_wrap=True, overflow="ignore")


def _add(tree: Tree, node: dict, show_all: bool, shown_ids: set[str]) -> None:
    for parent in node.get("parents", []):
        label = f"{parent.get('role', '?')}: {parent.get('kind', '?')} {parent.get('id', '?')[:12]}  {parent['path']}"
        if parent.get("error"):
            label += f"  [{parent['error']}]"
        if parent.get("id") in shown_ids:  # e.g. a checkpoint's tokenizer, also its dataset's parent
            tree.add(_line(label + "  (its lineage is shown above)"))
            continue
        shown_ids.add(parent.get("id"))
        _add(tree.add(_line(label)), parent, show_all, shown_ids)
    raw_files = node.get("files", [])
    shown = raw_files if show_all else raw_files[:_SHOWN_FILES]
    for raw in shown:
        tree.add(_line(f"file ({raw.get('role', 'input')}): {raw['path']}  {raw['size']:,} bytes  "
                       f"sha256 {raw['sha256'][:12]}"))
    if len(shown) < len(raw_files):
        rest = raw_files[len(shown):]
        tree.add(f"... {len(rest)} more files, {sum(f['size'] for f in rest):,} bytes (--all lists them)")


def _longest(tree: Tree) -> int:
    label = tree.label.plain if isinstance(tree.label, Text) else str(tree.label)
    return max([len(label), *(_longest(child) for child in tree.children)])


def _depth(tree: Tree) -> int:
    return 1 + max((_depth(child) for child in tree.children), default=0)


@app.command("lineage")
@handle_errors
def lineage(
    path: Path = typer.Argument(..., help="An artifact directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the tree as JSON."),
    show_all: bool = typer.Option(False, "--all", help=f"List every raw input file, not just the first {_SHOWN_FILES}."),
) -> None:
    """Show where an artifact comes from: parent artifacts, recursively, down to raw input files."""
    artifacts.read_manifest(path)  # a clear error when PATH is not an artifact
    node = artifacts.lineage(path)
    if as_json:
        reporter.out.print(json.dumps(node, indent=2, ensure_ascii=False), markup=False, soft_wrap=True)
        return
    tree = Tree(_line(f"{node['kind']} {node['id'][:12]}  {node['path']}"))
    _add(tree, node, show_all, {node["id"]})
    # Paths are long and a cut one is useless: make room for the longest line rather than crop it.
    width = max(reporter.out.width, _longest(tree) + 8 * _depth(tree))
    Console(file=reporter.out.file, width=width, highlight=False).print(tree)
