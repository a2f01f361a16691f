# SPDX-License-Identifier: Apache-2.0
"""Gather/scatter of one layer's KV between an engine's tensors and a staging segment (C++).

Tensors may be torch tensors or numpy arrays, on the CPU (CUDA tensors come with the GPU data
path). Only their address, shape and byte strides cross into C++, which bound-checks everything
again; the caller keeps the tensors alive for the duration of the call (calls are synchronous).

>>> gather_paged(layer_kv, np.array([7, 3, 9]), staging_view)    # pages 7, 3, 9 -> staging
>>> scatter_paged(layer_kv, np.array([1, 2, 4]), staging_view)   # staging -> pages 1, 2, 4
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._native import _C


class TensorInfo(NamedTuple):
    address: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # bytes
    elem_bytes: int
    nbytes: int               # extent from the first to one past the last element


def tensor_info(t: Any, *, allow_cuda: bool = False) -> TensorInfo:
    """Address, shape and byte strides of a torch tensor (CPU, or CUDA with ``allow_cuda``) or a
    numpy array."""
    if isinstance(t, np.ndarray):
        return TensorInfo(t.ctypes.data, tuple(t.shape), tuple(t.strides), t.itemsize,
                          _extent(t.shape, t.strides, t.itemsize))
    if hasattr(t, "data_ptr") and hasattr(t, "element_size"):  # torch.Tensor, without importing it
        dev = getattr(t, "device", None)
        kind = getattr(dev, "type", "cpu") if dev is not None else "cpu"
        if kind != "cpu" and not (allow_cuda and kind == "cuda"):
            raise ValueError(f"tensor is on {dev}: this copy takes CPU memory "
                             "(CUDA tensors go through yrcache.cuda)")
        es = int(t.element_size())
        strides = tuple(int(s) * es for s in t.stride())
        shape = tuple(int(s) for s in t.shape)
        return TensorInfo(int(t.data_ptr()), shape, strides, es, _extent(shape, strides, es))
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(t).__name__}")


def _extent(shape: tuple[int, ...], strides: tuple[int, ...], es: int) -> int:
    if any(n == 0 for n in shape):
        return 0
    if any(s < 0 for s in strides):
        raise ValueError("negative strides are not supported")
    return sum((n - 1) * s for n, s in zip(shape, strides)) + es


def _check_writable(t: Any) -> None:
    if isinstance(t, np.ndarray) and not t.flags.writeable:
        raise ValueError("the destination array is read-only")


def _ids(block_ids: Any) -> np.ndarray:
    a = np.asarray(block_ids)
    if a.ndim != 1:
        raise ValueError(f"block ids must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"block ids must be integers, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _paged(layer: Any, *, allow_cuda: bool = False) -> tuple[int, int, int, int]:
    """(address, num_blocks, page_bytes, block_stride) of a [num_blocks, ...] layer tensor whose
    blocks are each one contiguous page."""
    ti = tensor_info(layer, allow_cuda=allow_cuda)
    if not ti.shape:
        raise ValueError("a paged layer needs a leading block dimension")
    inner = _extent(ti.shape[1:], ti.strides[1:], ti.elem_bytes) if len(ti.shape) > 1 else \
        ti.elem_bytes
    page = ti.elem_bytes
    for n in ti.shape[1:]:
        page *= n
    if inner != page:
        raise ValueError("each block of a paged layer must be one contiguous page "
                         f"(block extent {inner} bytes, {page} bytes of data)")
    stride = ti.strides[0] if len(ti.shape) > 0 else page
    return ti.address, ti.shape[0], page, stride


def gather_paged(layer: Any, block_ids: Any, dst: Any, *, threads: int = 0) -> int:
    """Copy pages ``block_ids`` of a paged layer tensor into ``dst`` back to back; returns bytes."""
    base, nb, page, stride = _paged(layer)
    ids = _ids(block_ids)
    _C.copy.gather_paged(base, nb, page, stride, ids, dst, threads)
    return page * ids.size


def scatter_paged(layer: Any, block_ids: Any, src: Any, *, threads: int = 0) -> int:
    """Copy ``src`` (pages back to back) into pages ``block_ids``; returns bytes."""
    base, nb, page, stride = _paged(layer)
    _check_writable(layer)
    ids = _ids(block_ids)
    _C.copy.scatter_paged(base, nb, page, stride, ids, src, threads)
    return page * ids.size


def _dense(t: Any, *, allow_cuda: bool = False) -> tuple[int, list[int], list[int], int]:
    ti = tensor_info(t, allow_cuda=allow_cuda)
    if len(ti.shape) != 4:
        raise ValueError(f"a dense K/V tensor is [batch, heads, seq, head_dim], got shape {ti.shape}")
    return ti.address, list(ti.shape), list(ti.strides), ti.elem_bytes


def dense_bytes(t: Any, n_tokens: int) -> int:
    """Segment bytes of ``n_tokens`` of one K (or V) tensor."""
    _, shape, _, es = _dense(t)
    return shape[1] * n_tokens * shape[3] * es


def gather_dense(t: Any, t0: int, n: int, dst: Any, *, batch: int = 0) -> int:
    """Tokens [t0, t0+n) of batch row ``batch`` into ``dst``, head-major; returns bytes."""
    base, shape, strides, es = _dense(t)
    _C.copy.gather_dense(base, shape, strides, es, batch, t0, n, dst)
    return shape[1] * n * shape[3] * es


def scatter_dense(t: Any, t0: int, n: int, src: Any, *, batch: int = 0) -> int:
    """``src`` (head-major) into tokens [t0, t0+n) of batch row ``batch``; returns bytes."""
    base, shape, strides, es = _dense(t)
    _check_writable(t)
    _C.copy.scatter_dense(base, shape, strides, es, batch, t0, n, src)
    return shape[1] * n * shape[3] * es


__all__ = ["TensorInfo", "dense_bytes", "gather_dense", "gather_paged", "scatter_dense",
           "scatter_paged", "tensor_info"]
