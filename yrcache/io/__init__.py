# SPDX-License-Identifier: Apache-2.0
"""Host-side file I/O (csrc/io, csrc/mem, csrc/runtime): the io_uring/psync engine with its Futures
(:mod:`.engine`) and pools of registered staging slabs (:mod:`.buffers`)."""
from .buffers import MAX_ARENA_BYTES, BufferPool
from .engine import MAX_THREADS, File, HostBuffer, IoEngine

__all__ = ["MAX_ARENA_BYTES", "MAX_THREADS", "BufferPool", "File", "HostBuffer", "IoEngine"]
