"""Human-readable sizes and durations for flags such as ``--shard-size 64MB`` and ``--max-time 30m``."""

from __future__ import annotations

import math
import re

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes in "64MB", "1.5GiB", "4096" (decimal units for KB/MB/GB, binary for KiB/MiB/GiB)."""
    if isinstance(text, int):
        return text
    match = _PATTERN.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 64MB, 1GiB)")
    size = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(size):  # hundreds of digits: int() of infinity would raise OverflowError
        raise ValueError(f"not a size: {text!r} (too large)")
    return int(size)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|[smhd]?)\s*$")
_SECONDS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in "5ms", "90", "90s", "10m", "1.5h"; "" means no limit (0)."""
    if not text:
        return 0.0
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 5ms, 90s, 10m, 2h)")
    return float(match.group(1)) * _SECONDS[match.group(2)]
