# SPDX-License-Identifier: Apache-2.0
"""Imports the extension once and turns a failed import into an actionable message."""
from __future__ import annotations

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only on broken installs
    raise ImportError(
        "yrcache's native extension yrcache._C failed to import "
        f"({e}). Build it with `pip install .` (needs cmake, ninja, a C++17 compiler; "
        "liburing-dev for the io_uring backend)."
    ) from e

__all__ = ["_C"]
