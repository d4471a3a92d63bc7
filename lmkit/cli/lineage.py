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
# The values shown beside each artifact of a kind, as (label, section, key) where section is the manifest's
# "config" or "stats" and a dotted key reaches inside; missing and null values are left out. --json has all.
KEY_VALUES: dict[str, list[tuple[str, str, str]]] = {
    "tokenizer": [("type", "config", "type"), ("vocab", "config", "vocab_size")],
    "dataset": [("vocab", "stats", "vocab_size"), ("documents", "stats", "documents_kept"),
                ("tokens", "stats", "tokens"), ("labels", "stats", "labels.names")],
    "checkpoint": [("model", "config", "model"), ("arch", "stats", "arch"), ("objective", "stats", "objective"),
                   ("task", "config", "task"), ("step", "stats", "step"), ("max_steps", "config", "max_steps"),
                   ("lr", "config", "lr"), ("lora_rank", "config", "lora_rank")],
    "export": [("format", "config", "format"), ("as", "stats", "architecture")],
}


def _lookup(values: dict, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(values, dict):
            return None
        values = values.get(part)
    return values


def key_values(node: dict) -> str:
    """``name value, ...`` of a lineage node's key settings and results (see KEY_VALUES)."""
    shown = []
    for label, section, key in KEY_VALUES.get(node.get("kind", ""), []):
        value = _lookup(node.get(section) or {}, key)
        if value is None or value == "" or (label in ("task", "lora_rank") and value in ("auto", 0)):
            continue
        if node.get("kind") == "dataset" and label == "vocab" and not node.get("config", {}).get("tokenizer"):
            shown.append(f"tokenizer {node['config'].get('tokenizer_type', '?')}")  # trained with the dataset
        if isinstance(value, list):
            value = ",".join(map(str, value[:6])) + (",..." if len(value) > 6 else "")
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
            value = f"{value:,}"
        shown.append(f"{label} {value}")
    return ", ".join(shown)


def _label(prefix: str, node: dict) -> str:
    label = f"{prefix}{node.get('kind', '?')} {node.get('id', '?')[:12]}  {node['path']}"
    values = key_values(node)
    return f"{label}  [{values}]" if values else label


def _line(text: str) -> Text:
    """A tree label that is never wrapped or cut: paths are long, and a cut one is useless."""
    return Text(text, no_wrap=True, overflow="ignore")


def _add(tree: Tree, node: dict, show_all: bool, shown_ids: set[str]) -> None:
    for parent in node.get("parents", []):
        label = _label(f"{parent.get('role', '?')}: ", parent)
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
    as_json: bool = typer.Option(False, "--json", help="Print the whole tree as JSON: each artifact's kind, id, "
                                 "config and stats, its parents and raw input files."),
    show_all: bool = typer.Option(False, "--all", help="List every raw input file, not just the first "
                                  f"{_SHOWN_FILES}."),
) -> None:
    """Show where an artifact comes from: its parents, recursively, to raw input files, with key settings."""
    artifacts.read_manifest(path)  # a clear error when PATH is not an artifact
    node = artifacts.lineage(path)
    if as_json:
        reporter.out.print(json.dumps(node, indent=2, ensure_ascii=False), markup=False, soft_wrap=True)
        return
    tree = Tree(_line(_label("", node)))
    _add(tree, node, show_all, {node["id"]})
    # Paths are long and a cut one is useless: make room for the longest line rather than crop it.
    width = max(reporter.out.width, _longest(tree) + 8 * _depth(tree))
    Console(file=reporter.out.file, width=width, highlight=False).print(tree)
