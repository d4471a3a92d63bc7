"""``lmkit lineage PATH``: the tree of parent artifacts back to the raw input files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.tree import Tree

from lmkit import artifacts
from lmkit.cli._util import app, handle_errors
from lmkit.progress import reporter


_SHOWN_FILES = 8


def _add(tree: Tree, node: dict, show_all: bool, shown_ids: set[str]) -> None:
    for parent in node.get("parents", []):
        label = f"{parent.get('role', '?')}: {parent.get('kind', '?')} {parent.get('id', '?')[:12]}  {parent['path']}"
        if parent.get("error"):
            label += f"  [{parent['error']}]"
        if parent.get("id") in shown_ids:  # e.g. a checkpoint's tokenizer, also its dataset's parent
            tree.add(label + "  (its lineage is shown above)")
            continue
        shown_ids.add(parent.get("id"))
        _add(tree.add(label), parent, show_all, shown_ids)
    raw_files = node.get("files", [])
    shown = raw_files if show_all else raw_files[:_SHOWN_FILES]
    for raw in shown:
        tree.add(f"file ({raw.get('role', 'input')}): {raw['path']}  {raw['size']:,} bytes  sha256 {raw['sha256'][:12]}")
    if len(shown) < len(raw_files):
        rest = raw_files[len(shown):]
        tree.add(f"... {len(rest)} more files, {sum(f['size'] for f in rest):,} bytes (--all lists them)")


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
    tree = Tree(f"{node['kind']} {node['id'][:12]}  {node['path']}")
    _add(tree, node, show_all, {node["id"]})
    reporter.out.print(tree, soft_wrap=True)
