# SPDX-License-Identifier: Apache-2.0
"""Environment overrides (``YRCACHE_*``), parsed in one place. C++ never reads the environment."""
from __future__ import annotations

import os
from typing import Any

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
