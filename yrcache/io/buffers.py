# SPDX-License-Identifier: Apache-2.0
"""A pool of page-aligned staging slabs carved from one HostBuffer arena.

The arena is allocated and registered with an engine's io_uring once (fixed-buffer I/O for every
slab, no per-request pinning); the GPU path registers the same arena with CUDA (cudaHostRegister),
so one staging memory serves both. Slabs are recycled, never freed, so the hot path allocates
nothing.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .._args import check_int
from .engine import HostBuffer, IoEngine

#: one pool's arena at most (1 TiB): a larger request is a unit mistake, not a staging size
MAX_ARENA_BYTES = 1 << 40


_arenas = [0]   # large host buffers allocated in this process (what start-up should pay for)


def arena(nbytes: int) -> Any:
    """A page-aligned host buffer for a pool of slabs, counted (:func:`arenas_allocated`)."""
    buf = HostBuffer(nbytes)
    _arenas[0] += 1
    return buf


def arenas_allocated() -> int:
    """How many arenas (staging, prefetch) this process allocated so far: a test of the claim
    that no request pays for one."""
    return _arenas[0]


class BufferPool:
    """``count`` slabs of ``slab_bytes`` (rounded up to 4 KiB) from one registered arena.

    ``acquire()`` returns a writable memoryview of a free slab, or None when all are in use (the
    caller decides whether to wait or drop: backpressure, not unbounded memory). ``release(view)``
    returns it. Thread-safe.
    """

    def __init__(self, slab_bytes: int, count: int, engine: IoEngine | None = None) -> None:
        check_int("slab_bytes", slab_bytes, 1, MAX_ARENA_BYTES)
        check_int("count", count, 1, MAX_ARENA_BYTES // (-(-slab_bytes // 4096) * 4096))
        self.slab_bytes = -(-slab_bytes // 4096) * 4096
        self.count = count
        self.arena: Any = arena(self.slab_bytes * count)
        self.registered = engine.register(self.arena) if engine is not None else False
        self._view = memoryview(self.arena)
        self._free = list(range(count - 1, -1, -1))
        self._out: dict[int, int] = {}  # id(view) -> slab index
        self._lock = threading.Lock()
        self.cuda_pinned = False   # registered with CUDA too (Cache, on its first CUDA copy)

    def touch(self) -> None:
        """Fault every page of the arena in now, not under the first I/O (registration with
        io_uring already did, when it succeeded)."""
        if not self.registered:
            np.frombuffer(self.arena, np.uint8)[::4096] = 0

    def acquire(self) -> memoryview | None:
        with self._lock:
            if not self._free:
                return None
            i = self._free.pop()
            view = self._view[i * self.slab_bytes:(i + 1) * self.slab_bytes]
            self._out[id(view)] = i
            return view

    def release(self, view: memoryview) -> None:
        with self._lock:
            i = self._out.pop(id(view), None)
            if i is None:
                raise ValueError("release() of a view that this pool did not hand out")
            self._free.append(i)

    @property
    def available(self) -> int:
        with self._lock:
            return len(self._free)


__all__ = ["BufferPool"]
