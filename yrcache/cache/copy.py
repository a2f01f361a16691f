# SPDX-License-Identifier: Apache-2.0
"""Gather/scatter of one layer's KV between an engine's tensors and a staging segment (C++).

Tensors may be torch tensors or numpy arrays, on the CPU (CUDA tensors go through
:mod:`yrcache.cuda.copy`). Only their address, shape and byte strides (:mod:`yrcache.tensors`)
cross into C++, which bound-checks everything again; the caller keeps the tensors alive for the
duration of the call (calls are synchronous).

>>> gather_paged(layer_kv, np.array([7, 3, 9]), staging_view)    # pages 7, 3, 9 -> staging
>>> scatter_paged(layer_kv, np.array([1, 2, 4]), staging_view)   # staging -> pages 1, 2, 4
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._native import _C
from ..tensors import TensorInfo, block_id_array, dense_geometry, paged_geometry, tensor_info


def _check_writable(t: Any) -> None:
    if isinstance(t, np.ndarray) and not t.flags.writeable:
        raise ValueError("the destination array is read-only")


def gather_paged(layer: Any, block_ids: Any, dst: Any, *, threads: int = 0) -> int:
    """Copy pages ``block_ids`` of a paged layer tensor into ``dst`` back to back; returns bytes."""
    base, nb, page, stride = paged_geometry(layer)
    ids = block_id_array(block_ids)
    _C.copy.gather_paged(base, nb, page, stride, ids, dst, threads)
    return page * ids.size


def scatter_paged(layer: Any, block_ids: Any, src: Any, *, threads: int = 0) -> int:
    """Copy ``src`` (pages back to back) into pages ``block_ids``; returns bytes."""
    base, nb, page, stride = paged_geometry(layer)
    _check_writable(layer)
    ids = block_id_array(block_ids)
    _C.copy.scatter_paged(base, nb, page, stride, ids, src, threads)
    return page * ids.size


def dense_bytes(t: Any, n_tokens: int) -> int:
    """Segment bytes of ``n_tokens`` of one K (or V) tensor."""
    return dense_geometry(t).token_bytes(n_tokens)


def gather_dense(t: Any, t0: int, n: int, dst: Any, *, batch: int = 0) -> int:
    """Tokens [t0, t0+n) of batch row ``batch`` into ``dst``, head-major; returns bytes."""
    g = dense_geometry(t)
    _C.copy.gather_dense(g.address, g.shape, g.strides, g.elem_bytes, batch, t0, n, dst)
    return g.token_bytes(n)


def scatter_dense(t: Any, t0: int, n: int, src: Any, *, batch: int = 0) -> int:
    """``src`` (head-major) into tokens [t0, t0+n) of batch row ``batch``; returns bytes."""
    g = dense_geometry(t)
    _check_writable(t)
    _C.copy.scatter_dense(g.address, g.shape, g.strides, g.elem_bytes, batch, t0, n, src)
    return g.token_bytes(n)


__all__ = ["TensorInfo", "dense_bytes", "gather_dense", "gather_paged", "scatter_dense",
           "scatter_paged", "tensor_info"]
