"""Byte streams and lines: opening inputs, decompressing by suffix, counting bytes consumed, assembling
bounded lines (_TextSource), decoding UTF-8 under --encoding-errors, and the bad-record policy."""

from __future__ import annotations

import bz2
import collections
import contextlib
import gzip
import io
import lzma
import re
import sys
import zlib
from typing import Any, BinaryIO, Callable, Iterator

from lmkit.data.sources.inputs import _split_name
from lmkit.data.sources.options import ReadOptions
from lmkit.errors import UserError

_SNIFF_BYTES = 8192        # a NUL byte this early means a binary (or UTF-16) file, not UTF-8 text
_CHUNK_BYTES = 1 << 16     # read size; a line is assembled from chunks so memory stays bounded
_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n?|\n")
_SKIP_HINT = "use --skip-bad-records to skip such records"
_TOO_LONG = object()


class _Progress:
    """This input's share of counts["input_bytes"], advanced as bytes are consumed."""

    def __init__(self, counts: collections.Counter):
        self._counts, self.done = counts, 0

    def add(self, n: int) -> None:
        self.done += n
        self._counts["input_bytes"] += n

    def reach(self, total: int) -> None:
        if total > self.done:
            self.add(total - self.done)


class _CountingFile(io.RawIOBase):
    """The stored (possibly compressed) byte stream, reporting each read to the progress count."""

    def __init__(self, raw: BinaryIO, progress: _Progress):
        super().__init__()
        self._raw, self._progress = raw, progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # read(), not readinto(): stdin may be a wrapper (hashing its bytes) that only implements read().
        data = self._raw.read(len(buffer))
        buffer[: len(data)] = data
        self._progress.add(len(data))
        return len(data)


def _open_file(path: str) -> BinaryIO:
    try:
        return open(path, "rb", buffering=0)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise UserError(f"{path}: is a directory, not a file") from exc
    except PermissionError as exc:
        raise UserError(f"{path}: permission denied") from exc
    except OSError as exc:
        raise UserError(f"{path}: cannot open ({exc.strerror})") from exc


def _open_byte_stream(path: str, stack: contextlib.ExitStack, progress: _Progress,
                      stdin: BinaryIO | None) -> Callable[[int], bytes]:
    """A ``read(n)`` over the decompressed bytes of an input; decompression errors name the file."""
    if path == "-":
        return _CountingFile(stdin if stdin is not None else sys.stdin.buffer, progress).read
    counted = _CountingFile(stack.enter_context(_open_file(path)), progress)
    compression = _split_name(path)[1]
    if not compression:
        return counted.read
    stream, errors, kind = _decompressor(compression, counted, path)
    stack.enter_context(stream)

    def read(n: int) -> bytes:
        try:
            return stream.read(n)
        except errors as exc:
            raise UserError(f"{path}: corrupt or not {kind} data ({exc})") from exc
    return read


def _decompressor(compression: str, raw: BinaryIO, path: str) -> tuple[Any, tuple, str]:
    """(stream, the exceptions that mean corrupt data, format name) for a compression suffix."""
    if compression == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), (OSError, EOFError, zlib.error), "gzip"
    if compression == ".bz2":
        return bz2.BZ2File(raw), (OSError, EOFError), "bzip2"
    if compression == ".xz":
        return lzma.LZMAFile(raw), (lzma.LZMAError, EOFError), "xz"
    try:
        import zstandard
    except ImportError:
        raise UserError(f"{path}: reading .zst files needs the zstandard package: pip install 'lmkit[zstd]'") \
            from None
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
    return reader, (zstandard.ZstdError,), "zstd"


class _TextSource:
    """Lines of a byte stream, ending in \\n, \\r\\n or \\r, assembled from bounded chunks.

    Checks the first bytes for NUL (binary input) and drops a UTF-8 BOM. A line longer than the
    caller's limit is reported as ``_TOO_LONG`` without being held; its rest is discarded on the next call.
    """

    def __init__(self, read: Callable[[int], bytes], name: str):
        self.name, self._read = name, read
        self._buffer = bytearray()
        self._scan = 0             # no line end before this index of the buffer
        self._eof = False
        self._discard_pending = False
        self.line_no = 0           # 1-based number of the line last returned
        self.last_terminated = False
        self._check_start()

    def _fill(self) -> bool:
        if not self._eof:
            chunk = self._read(_CHUNK_BYTES)
            if chunk:
                self._buffer += chunk
                return True
            self._eof = True
        return False

    def _check_start(self) -> None:
        while len(self._buffer) < _SNIFF_BYTES and self._fill():
            pass
        nul = self._buffer.find(b"\0", 0, _SNIFF_BYTES)
        if nul >= 0:
            raise UserError(f"{self.name} looks binary (NUL byte at offset {nul}); text input must be UTF-8")
        if self._buffer.startswith(_BOM):
            del self._buffer[: len(_BOM)]

    def _line_end(self, start: int) -> tuple[re.Match | None, bool]:
        """The next line end at or after ``start``, and whether it is certain: a \\r that ends the
        buffer may be the first half of a \\r\\n split across chunks."""
        match = _LINE_END.search(self._buffer, start)
        certain = match is not None and (self._eof or match.end() < len(self._buffer) or match.group() == b"\r\n")
        return match, certain

    def next_line(self, limit: int) -> bytes | object | None:
        """The next line without its terminator, ``_TOO_LONG`` if over ``limit`` bytes, None at the end."""
        if self._discard_pending:
            self._discard_rest_of_line()
        while True:
            match, certain = self._line_end(self._scan)
            if certain:
                return self._take(match.start(), match.end(), limit)
            content = match.start() if match else len(self._buffer)
            if content > limit:
                self.line_no += 1
                self._discard_pending = True
                return _TOO_LONG
            self._scan = content
            if not self._fill() and match is None:
                if not self._buffer:
                    return None
                return self._take(len(self._buffer), len(self._buffer), limit)

    def _take(self, end: int, after: int, limit: int) -> bytes | object:
        line = bytes(self._buffer[:end])
        self.last_terminated = after > end
        del self._buffer[:after]
        self._scan = 0
        self.line_no += 1
        return line if len(line) <= limit else _TOO_LONG

    def _discard_rest_of_line(self) -> None:
        self._discard_pending = False
        while True:
            match, certain = self._line_end(0)
            if certain:
                del self._buffer[: match.end()]
                break
            del self._buffer[: match.start() if match else len(self._buffer)]
            if not self._fill() and match is None:
                break
        self._scan = 0

    def read_all(self, limit: int) -> bytes | None:
        """The rest of the input, or None if it is longer than ``limit`` bytes."""
        while len(self._buffer) <= limit and self._fill():
            pass
        return bytes(self._buffer) if len(self._buffer) <= limit else None

    def drain(self) -> None:
        """Consume the rest of the input (so byte counts and stdin hashes cover all of it)."""
        self._buffer.clear()
        while self._fill():
            self._buffer.clear()


# -- decoding and bad records -------------------------------------------------------------------------
def _decode(raw: bytes, location: str, encoding_errors: str) -> tuple[str, bool]:
    """The text of one line and whether it held invalid UTF-8 (then replaced by U+FFFD)."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError as exc:
        if encoding_errors == "strict":
            raise _invalid_utf8(raw, exc.start, location) from None
        return raw.decode("utf-8", errors="replace"), True


def _invalid_utf8(line: bytes, start: int, location: str) -> UserError:
    column = len(line[:start].decode("utf-8")) + 1  # in characters, as editors count; the prefix is valid
    return UserError(f"{location}: invalid UTF-8 (byte 0x{line[start]:02x} at column {column}); "
                     "use --encoding-errors replace|skip")


def _keep_encoding(invalid: bool, options: ReadOptions, counts: collections.Counter) -> bool:
    """Whether a record is kept given its UTF-8 validity; counts replaced and skipped records."""
    if not invalid:
        return True
    if options.encoding_errors == "skip":
        counts["encoding_skipped"] += 1
        return False
    counts["encoding_replaced"] += 1
    return True


def _bad_record(message: str, options: ReadOptions, counts: collections.Counter) -> None:
    """Count a bad record under --skip-bad-records, else stop on it."""
    if not options.skip_bad_records:
        raise UserError(f"{message}; {_SKIP_HINT}")
    counts["bad_records"] += 1


def _too_long(location: str, limit: int) -> str:
    return f"{location}: record longer than {limit} bytes (--max-record-bytes)"


def _decoded_lines(source: "_TextSource", options: ReadOptions,
                   counts: collections.Counter) -> Iterator[tuple[str, str, bool]]:
    """(location, text, had invalid UTF-8) of each non-blank line, oversized lines and invalid
    UTF-8 already handled by policy (error, or skipped and counted): for line-based readers."""
    limit = options.max_record_bytes
    while (raw := source.next_line(limit)) is not None:
        location = f"{source.name}:{source.line_no}"
        if raw is _TOO_LONG:
            counts["records"] += 1
            _bad_record(_too_long(location, limit), options, counts)
            continue
        text, invalid = _decode(raw, location, options.encoding_errors)
        if not text.strip():
            continue
        counts["records"] += 1
        if _keep_encoding(invalid, options, counts):
            yield location, text, invalid
