# SPDX-License-Identifier: Apache-2.0
"""Argument checks shared by the public entry points: a bad argument raises at the call, as
TypeError (wrong type) or ValueError (out of range), naming the argument, never later in a
background thread or as a cache fault."""
from __future__ import annotations

import numbers
from typing import Any

#: bytes of a key, a chain root and a namespace digest (BLAKE2b-128; docs/keys.md)
DIGEST_BYTES = 16
#: the widest unsigned field an object header holds (chunk_index, token_count)
U32_MAX = (1 << 32) - 1


def check_int(name: str, v: Any, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    """``v`` as an int in [lo, hi]; bools and floats are refused (``True`` is not a count)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r:.40}")
    v = int(v)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return v


def check_digest(name: str, v: Any) -> bytes:
    """A chunk key or chain root: exactly DIGEST_BYTES bytes."""
    if not isinstance(v, (bytes, bytearray)):
        raise TypeError(f"{name} must be {DIGEST_BYTES} bytes, got {type(v).__name__} {v!r:.40}")
    if len(v) != DIGEST_BYTES:
        raise ValueError(f"{name} must be {DIGEST_BYTES} bytes, got {len(v)}: {bytes(v)!r:.40}")
    return bytes(v)


def check_digests(name: str, vs: Any) -> list[bytes]:
    if isinstance(vs, (bytes, bytearray, str)) or not hasattr(vs, "__iter__"):
        raise TypeError(f"{name} must be a sequence of {DIGEST_BYTES}-byte keys, got "
                        f"{type(vs).__name__}")
    return [check_digest(f"{name}[{i}]", k) for i, k in enumerate(vs)]
