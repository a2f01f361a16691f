# SPDX-License-Identifier: Apache-2.0
"""Environment overrides (``YRCACHE_*``), parsed in one place. C++ never reads the environment."""
from __future__ import annotations

import math
import os
from typing import Any

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40, "P": 1 << 50, "PIB": 1 << 50,
          "E": 1 << 60, "EIB": 1 << 60}
#: the largest size anything here takes: a signed 64-bit byte count (8 EiB)
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int:
    """``"256K"`` -> 262144 (binary units: K, M, G, T, P, E; optional ``iB``/``B``; a decimal
    number before the unit). ValueError for anything else, for a non-finite number, and for sizes
    outside [0, MAX_SIZE]."""
    if not isinstance(text, str):
        raise TypeError(f"a size is a str like '256K', got {type(text).__name__}")
    s = text.strip().upper()
    i = len(s)
    while i > 0 and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    unit = s[i:].strip()
    if unit.endswith("B") and unit not in _UNITS:
        unit = unit[:-1]
    if unit not in _UNITS or not s[:i]:
        raise ValueError(f"not a size: {text!r:.60} (use e.g. 256K, 1M, 1G)")
    num = s[:i]
    try:  # integers exactly (floats lose bytes above 2**53), else a decimal fraction
        n = int(num) * _UNITS[unit] if num.isdigit() else float(num) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r:.60} (use e.g. 256K, 1M, 1G)") from None
    if isinstance(n, float) and not math.isfinite(n):
        raise ValueError(f"not a finite size: {text!r:.60}")
    if not 0 <= n <= MAX_SIZE:
        raise ValueError(f"size {text!r:.60} is out of range (0 to {MAX_SIZE} bytes, 8 EiB)")
    return int(n)

#: name -> (default, parser, doc)
ENV: dict[str, tuple[Any, Any, str]] = {
    "YRCACHE_BACKEND": ("auto", str, "I/O backend: auto | uring | psync"),
    "YRCACHE_QUEUE_DEPTH": (8, int, "kernel I/Os in flight per engine"),
    "YRCACHE_CHUNK_BYTES": (1 << 20, int, "large requests are cut into pieces of this size"),
    "YRCACHE_INFLIGHT_BYTES": (16 << 20, int, "cap on bytes in flight per engine"),
}


def get(name: str) -> Any:
    default, parse, _ = ENV[name]
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={raw!r} is invalid: {e}") from None


def io_defaults() -> dict[str, Any]:
    return {
        "backend": get("YRCACHE_BACKEND"),
        "queue_depth": get("YRCACHE_QUEUE_DEPTH"),
        "chunk_bytes": get("YRCACHE_CHUNK_BYTES"),
        "max_inflight_bytes": get("YRCACHE_INFLIGHT_BYTES"),
    }
