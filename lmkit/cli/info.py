"""``lmkit info PATH``: what an artifact is, what made it and what it holds."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from lmkit import artifacts
from lmkit.cli._util import app, handle_errors
from lmkit.progress import reporter


def _flatten(prefix: str, value: object, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, rows)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        rows.append((prefix, f"{len(value)} entries"))
    else:
        rows.append((prefix, json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value))


def _model_line(path: Path, manifest: dict) -> str | None:
    """A checkpoint's architecture in words (its family, shape and size), from model.json."""
    if manifest["kind"] != "checkpoint" or not (path / "model.json").is_file():
        return None
    from lmkit.models.config import ModelConfig  # torch-free

    described = json.loads((path / "model.json").read_text())
    config = ModelConfig.from_dict(described["model"])
    shape = f"{config.n_layer} layers, d_model {config.d_model}"
    if config.arch != "lstm":
        shape += f", {config.n_head} heads" + (f" ({config.kv_heads} kv)" if config.kv_heads != config.n_head else "")
    return f"{config.arch}: {config.family}; {shape}, vocabulary {config.vocab_size:,}, block {config.block_size}"


def _chat_line(path: Path, manifest: dict) -> str | None:
    """A chat model's template in a line: its kind, the end-of-turn id, the stop ids and the system prompt."""
    if manifest["kind"] != "checkpoint" or not (path / "model.json").is_file():
        return None
    described = json.loads((path / "model.json").read_text())
    chat = described.get("chat")
    if not isinstance(chat, dict):
        return None
    template = chat.get("template") or ""
    kind = "ChatML" if "<|im_start|>" in template else "a Jinja template"
    system = f"; system prompt {chat['system']!r}" if chat.get("system") else ""
    return (f"{kind} ({len(template):,} characters), end of turn id {chat.get('end_of_turn')}, stop ids "
            f"{described.get('stop', [])}{system}")


@app.command("info")
@handle_errors
def info(
    path: Path = typer.Argument(..., help="An artifact directory (dataset, tokenizer, checkpoint, report)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show an artifact's kind, id, config, stats and parents (reads the manifest; `verify` re-hashes)."""
    manifest = artifacts.read_manifest(path)
    if as_json:
        reporter.out.print_json(data=manifest)
        return
    table = Table(show_header=False, title=f"{path}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("kind", f"{manifest['kind']} (format {manifest['format_version']})")
    table.add_row("id", manifest["id"])
    table.add_row("created", f"{manifest['created_at']} by lmkit {manifest['lmkit_version']}")
    size = sum(entry.get("size", 0) for entry in manifest["files"].values())
    table.add_row("files", f"{len(manifest['files'])} ({size:,} bytes)")
    for parent in manifest["inputs"].get("artifacts", []):
        table.add_row(f"parent: {parent['role']}", f"{parent['path']} ({parent['id'][:12]})")
    model = _model_line(Path(path), manifest)
    if model:
        table.add_row("model", model)
    chat = _chat_line(Path(path), manifest)
    if chat:
        table.add_row("chat", chat)
    raw = manifest["inputs"].get("files", [])
    if raw:
        table.add_row("raw inputs", f"{len(raw)} file(s), {sum(f['size'] for f in raw):,} bytes")
    rows: list[tuple[str, str]] = []
    _flatten("", manifest["config"], rows)
    for key, value in rows:
        table.add_row(f"config.{key}", value)
    rows = []
    _flatten("", manifest["stats"], rows)
    for key, value in rows:
        table.add_row(f"stats.{key}", value)
    reporter.out.print(table)
