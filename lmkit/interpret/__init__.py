"""Looking inside trained models: attention maps, linear probes, hidden states, attributions, activations."""

from __future__ import annotations

import os
from pathlib import Path


def write_files(out: Path, files: dict[str, str]) -> list[Path]:
    """Text files ``name -> content`` in ``out`` (created), each through a temporary sibling and a rename:
    a reader never sees half a file, and an error leaves the earlier version in place."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        partial = out / f".{name}.partial-{os.getpid()}"
        try:
            partial.write_text(text, encoding="utf-8")
            partial.replace(out / name)
        finally:
            partial.unlink(missing_ok=True)
        written.append(out / name)
    return written
