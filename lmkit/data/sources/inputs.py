"""Finding inputs: files, directories, glob patterns and stdin, and each input's format from its suffix
(or --input-format)."""

from __future__ import annotations

import glob
import os

from lmkit.artifacts import MANIFEST
from lmkit.data.sources.options import ReadOptions
from lmkit.errors import UserError

SUPPORTED_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".ndjson", ".json", ".csv", ".tsv",
                      ".parquet", ".arrow", ".ipc", ".feather")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")

_FORMAT_OF_SUFFIX = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl",
                     ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
                     ".arrow": "arrow", ".ipc": "arrow", ".feather": "arrow"}
# Parquet and Arrow compress internally and need random access, so they are never decompressed by suffix.
_COLUMNAR = ("parquet", "arrow")


def resolve_inputs(specs: list[str], *, input_format: str = "auto") -> list[str]:
    """Expand files, directories (recursive, sorted), glob patterns (sorted, ``**`` allowed) and "-"
    (stdin) into a de-duplicated list of inputs, keeping first occurrences.

    Directory expansion skips hidden entries and lmkit artifacts (directories holding a manifest), so an
    output written inside an input directory is never read back as input; naming an artifact is an error.

    With an explicit ``input_format``, explicit files and glob matches of any suffix are accepted.
    """
    if not specs:
        raise UserError("no inputs given: name files, directories, glob patterns, or - for stdin")
    resolved, seen = [], set()
    for spec in specs:
        for path in _expand(spec, input_format):
            key = path if path == "-" else os.path.normcase(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                resolved.append(path)
    return resolved


def _expand(spec: str, input_format: str) -> list[str]:
    if spec == "-":
        return ["-"]
    if os.path.isdir(spec):
        return _expand_directory(spec)
    if os.path.exists(spec):
        if input_format == "auto" and not _is_supported(spec):
            raise UserError(f"{spec}: unsupported file type; {_supported_list()} (or pass --input-format)")
        return [spec]
    if glob.has_magic(spec):
        return _expand_glob(spec, input_format)
    raise UserError(f"{spec}: no such file or directory")


def _expand_directory(directory: str) -> list[str]:
    if _is_artifact(directory):
        raise UserError(f"{directory}: is an lmkit artifact, not raw input")
    found = []
    for root, dirs, files in os.walk(directory, onerror=_raise_walk_error):
        # Hidden entries are tool metadata (.git, .cache, macOS "._x.txt" resource forks), not corpus;
        # artifacts are lmkit's own outputs (`preprocess corpus/ --out corpus/data`), not corpus either.
        dirs[:] = [d for d in dirs if not d.startswith(".") and not _is_artifact(os.path.join(root, d))]
        found += [os.path.join(root, f) for f in files if not f.startswith(".") and _is_supported(f)]
    if not found:
        raise UserError(f"{directory}: directory has no supported file; {_supported_list()}")
    return sorted(found)


def _is_artifact(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))


def _raise_walk_error(exc: OSError) -> None:
    raise UserError(f"{exc.filename}: cannot list directory ({exc.strerror})") from exc


def _expand_glob(pattern: str, input_format: str) -> list[str]:
    matches = [m for m in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(m)]
    if not matches:
        raise UserError(f"{pattern}: no file matches this pattern")
    found = [m for m in matches if input_format != "auto" or _is_supported(m)]
    if not found:
        raise UserError(f"{pattern}: pattern matches no supported file; {_supported_list()}")
    return found


def _split_name(path: str) -> tuple[str, str]:
    """(format suffix, compression suffix or "") of a file name, lower-cased."""
    name = os.path.basename(path).lower()
    compression = next((s for s in COMPRESSION_SUFFIXES if name.endswith(s)), "")
    return os.path.splitext(name[: len(name) - len(compression)])[1], compression


def _is_supported(path: str) -> bool:
    suffix, compression = _split_name(path)
    fmt = _FORMAT_OF_SUFFIX.get(suffix)
    return fmt is not None and not (compression and fmt in _COLUMNAR)


def _supported_list() -> str:
    return (f"supported: {', '.join(SUPPORTED_SUFFIXES)}, the text ones optionally compressed with "
            f"{', '.join(COMPRESSION_SUFFIXES)}")


def _display_name(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _input_format(path: str, options: ReadOptions) -> str:
    if path == "-":
        fmt = "txt" if options.input_format == "auto" else options.input_format
        if fmt == "parquet":
            raise UserError("<stdin>: parquet cannot be read from stdin (it needs random access); pass a file path")
        return fmt
    suffix, compression = _split_name(path)
    fmt = options.input_format if options.input_format != "auto" else _FORMAT_OF_SUFFIX.get(suffix)
    if fmt is None:
        raise UserError(f"{path}: unsupported file type; {_supported_list()} (or pass --input-format)")
    if compression and fmt in _COLUMNAR:
        raise UserError(f"{path}: {fmt} input cannot be {compression}-compressed (it compresses internally); "
                        "decompress it first")
    return fmt
