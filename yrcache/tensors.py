# SPDX-License-Identifier: Apache-2.0
"""What the copy paths need to know about an engine's tensors: address, shape, byte strides, and
the geometry of a paged layer or a dense K/V tensor. Torch tensors (CPU, or CUDA where the caller
allows it) and numpy arrays; torch is never imported.

Both data paths build on this: the CPU gather/scatter (:mod:`yrcache.cache.copy`) and the GPU
one (:mod:`yrcache.cuda.copy`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class TensorInfo(NamedTuple):
    address: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]  # bytes
    elem_bytes: int
    nbytes: int               # extent from the first to one past the last element


class PagedGeometry(NamedTuple):
    """A [num_blocks, ...] layer tensor whose blocks are each one contiguous page."""
    address: int
    num_blocks: int
    page_bytes: int
    block_stride: int         # bytes from one block to the next


class DenseGeometry(NamedTuple):
    """A [batch, heads, seq, head_dim] K or V tensor."""
    address: int
    shape: list[int]
    strides: list[int]        # bytes
    elem_bytes: int

    def token_bytes(self, n_tokens: int) -> int:
        """Segment bytes of ``n_tokens`` tokens of one batch row (every head)."""
        return self.shape[1] * n_tokens * self.shape[3] * self.elem_bytes


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


def block_id_array(block_ids: Any) -> np.ndarray:
    """``block_ids`` as a contiguous 1-D int64 array (integers only)."""
    a = np.asarray(block_ids)
    if a.ndim != 1:
        raise ValueError(f"block ids must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise TypeError(f"block ids must be integers, got {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.int64)


def paged_geometry(layer: Any, *, allow_cuda: bool = False) -> PagedGeometry:
    """Address, block count, page bytes and block stride of a paged layer tensor; raises unless
    each block is one contiguous page."""
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
    return PagedGeometry(ti.address, ti.shape[0], page, stride)


def dense_geometry(t: Any, *, allow_cuda: bool = False) -> DenseGeometry:
    """Address, shape, byte strides and element size of a [batch, heads, seq, head_dim] tensor."""
    ti = tensor_info(t, allow_cuda=allow_cuda)
    if len(ti.shape) != 4:
        raise ValueError("a dense K/V tensor is [batch, heads, seq, head_dim], "
                         f"got shape {ti.shape}")
    return DenseGeometry(ti.address, list(ti.shape), list(ti.strides), ti.elem_bytes)


__all__ = ["DenseGeometry", "PagedGeometry", "TensorInfo", "block_id_array", "dense_geometry",
           "paged_geometry", "tensor_info"]
