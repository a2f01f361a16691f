# SPDX-License-Identifier: Apache-2.0
"""yrcache: a KV-cache offload engine for LLM inference.

This release provides the foundation (an asynchronous file I/O engine: io_uring + O_DIRECT with a
psync fallback, page-aligned host buffers, a Future API) and the object store: content-addressed,
self-validating KV objects in a directory that many processes and nodes share (``Store``,
``Namespace``, ``chain_keys``). Importing yrcache never imports torch or initialises CUDA.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from ._native import _C
from .cache import Cache, KVLayout, LoadFuture, LoadResult, StoreFuture, StoreResult, StoreWriter
from .errors import BackendUnavailableError, ClosedError, CudaError, CudaUnavailableError
from .futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    gather,
    wait,
)
from .io import BufferPool, File, HostBuffer, IoEngine
from .store import GetResult, Namespace, Store, chain_keys, fold_extras

__version__: str = _C.build_info()["version"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def build_info(directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What was compiled, and what is usable at run time on this machine.

    Keys: ``version``, ``build_type``, ``compiler``, ``liburing`` (version or None), ``backends``
    (compiled), ``cuda`` (compiled, toolkit, archs, driver/device status), ``cufile``,
    ``io_uring`` (``{"usable": bool, "reason": str}``: can a ring be created here) and, when
    ``directory`` is given, ``odirect`` (``{"dir", "usable", "reason"}``).
    """
    info: dict[str, Any] = dict(_C.build_info())
    ok, reason = _C.io.probe_uring()
    info["io_uring"] = {"usable": bool(ok), "reason": reason}
    if directory is not None:
        d = os.fspath(directory)
        ok, reason = _C.io.probe_odirect(d)
        info["odirect"] = {"dir": d, "usable": bool(ok), "reason": reason}
    return info


__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "BackendUnavailableError", "BufferPool",
    "Cache", "KVLayout", "LoadFuture", "LoadResult", "StoreFuture", "StoreResult", "StoreWriter",
    "CancelledError", "ClosedError", "CudaError", "CudaUnavailableError", "File", "Future",
    "GetResult",
    "HostBuffer", "IoEngine", "Namespace", "Store", "__version__", "build_info", "chain_keys",
    "fold_extras", "gather", "wait",
]
