"""``lmkit lineage PATH``: the tree of parent artifacts back to the raw input files."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.tree import Tree

from lmkit import artifacts
from lmkit.cli._util import app, handle_errors
from lmkit.progress import reporter


def _add(tree: Tree, node: dict) -> None:
    for parent in node.get("parents", []):
        label = f"{parent.get('role', '?')}: {parent.get('kind', '?')} {parent.get('id', '?')[:12]}  {parent['path']}"
        if parent.get("error"):
            label += f"  [{parent['error']}]"
        _add(tree.add(label), parent)
    for raw in node.get("files", []):
        tree.add(f"file ({raw.get('role', 'input')}): {raw['path']}  {raw['size']:,} bytes  sha256 {raw['sha256'][:12]}")


@app.command("lineage")
@handle_errors
def lineage(
    path: Path = typer.Argument(..., help="An artifact directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the tree as JSON."),
) -> None:
    """Show where an artifact comes from: parent artifacts, recursively, down to raw input files."""
    artifacts.read_manifest(path)  # a clear error when PATH is not an artifact
    node = artifacts.lineage(path)
    if as_json:
        reporter.out.print(json.dumps(node, indent=2, ensure_ascii=False), markup=False, soft_wrap=True)
        return
    tree = Tree(f"{node['kind']} {node['id'][:12]}  {node['path']}")
    _add(tree, node)
    reporter.out.print(tree, soft_wrap=True)
