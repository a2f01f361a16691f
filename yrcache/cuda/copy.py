# SPDX-License-Identifier: Apache-2.0
"""The GPU data path, Python side: device checks, one copy engine per device, pinned staging.

The copy engine (``_C.cuda.Copier``) owns an offload (D2H) and a load (H2D) stream per device and
moves paged or dense KV between device memory and pinned host staging: a gather kernel packs a
layer's pages into device staging and one DMA moves them to the host (``method="staged"``, the
default), or a kernel reads/writes mapped host memory directly (``"mapped"``), or one DMA per run
of adjacent pages (``"dma"``); ``YRCACHE_GPU_COPY`` picks one. Copies are ordered with the
caller's compute stream through events, never by synchronizing the device:

>>> ev = gather_paged(layer_kv, ids, pinned_view, after_stream=torch.cuda.current_stream())
>>> ev.synchronize()          # the staging holds the pages (a background thread waits, not you)

Streams cross as integers (``torch.cuda.Stream.cuda_stream``) or stream objects; ``None`` means
the device's current torch stream. Without a driver or device every call raises
:class:`~yrcache.errors.CudaUnavailableError` saying why.
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from .. import envs
from .._native import _C
from ..errors import CudaError, CudaUnavailableError
from ..tensors import block_id_array, dense_geometry, paged_geometry

_lock = threading.Lock()
_copiers: dict[int, Any] = {}

METHODS = ("staged", "mapped", "dma")


def status() -> tuple[bool, str]:
    """(usable, why not): compiled in, a driver, and at least one device."""
    try:
        _C.cuda.require_device(0)
    except CudaUnavailableError as e:
        return False, str(e)
    return True, ""


def available() -> bool:
    return status()[0]


def require(device: int = 0) -> None:
    """Raise CudaUnavailableError (with the reason) unless ``device`` can be used."""
    _C.cuda.require_device(device)


def copier(device: int = 0) -> Any:
    """The copy engine of ``device`` (created once per process, on first use)."""
    with _lock:
        c = _copiers.get(device)
        if c is None:
            method = envs.get("YRCACHE_GPU_COPY")
            staging = envs.get("YRCACHE_GPU_STAGING_MB") << 20
            c = _copiers[device] = _C.cuda.Copier(device, staging, method)
        return c


_LEGACY_STREAM = 1   # cudaStreamLegacy: what handle 0 (torch's default stream) means


def stream_handle(stream: Any, device: int) -> int:
    """A non-zero integer cudaStream_t from None (torch's current stream on ``device``), an int,
    or an object with ``cuda_stream`` (torch.cuda.Stream). Handle 0, torch's default stream, is
    returned as cudaStreamLegacy: the copy engine's streams are non-blocking, so they would not
    synchronize with it implicitly, and 0 means "no stream" to the copy engine."""
    if stream is None:
        import torch
        h = int(torch.cuda.current_stream(device).cuda_stream)
    elif isinstance(stream, int):
        h = stream
    else:
        cs = getattr(stream, "cuda_stream", None)
        if cs is None:
            raise TypeError(f"expected a CUDA stream (int or torch.cuda.Stream), got "
                            f"{type(stream)}")
        h = int(cs)
    return h or _LEGACY_STREAM


def _opt_stream(stream: Any, device: int) -> int:
    """0 (no ordering) for None, else the stream's handle."""
    return 0 if stream is None else stream_handle(stream, device)


def pin(buffer: Any, device: int = 0) -> None:
    """Register a HostBuffer with CUDA (page-locked, mapped, portable to every device) for the
    rest of its life."""
    _C.cuda.host_register(buffer, device)


def device_of(t: Any) -> int:
    """-1 for CPU memory (numpy, CPU tensors), else the CUDA device index."""
    dev = getattr(t, "device", None)
    if dev is None or getattr(dev, "type", "cpu") == "cpu":
        return -1
    if dev.type != "cuda":
        raise ValueError(f"tensor is on {dev}: yrcache moves CPU and CUDA memory")
    return int(dev.index if dev.index is not None else 0)


def _paged(layer: Any) -> tuple[int, int, int, int, int]:
    """(device, address, num_blocks, page_bytes, block_stride) of a CUDA paged layer."""
    base, nb, page, stride = paged_geometry(layer, allow_cuda=True)
    return device_of(layer), base, nb, page, stride


def gather_paged(layer: Any, block_ids: Any, dst: Any, *, after_stream: Any = None,
                 after_event: Any = None) -> Any:
    """Pages ``block_ids`` of a CUDA layer tensor -> pinned ``dst``, back to back, on the
    device's offload stream after ``after_stream``'s work so far and after ``after_event`` (None:
    no ordering). Returns the completion Event."""
    dev, base, nb, page, stride = _paged(layer)
    s = _opt_stream(after_stream, dev)
    ids = block_id_array(block_ids)
    return copier(dev).gather_paged(base, nb, page, stride, ids, dst, s, after_event)


def scatter_paged(layer: Any, block_ids: Any, src: Any, *, after_stream: Any = None,
                  after_event: Any = None, signal: Any = None) -> Any:
    """Pinned ``src`` -> pages ``block_ids`` on the load stream; ``signal``'s later work waits
    for it (None: nobody's). Returns the completion Event."""
    dev, base, nb, page, stride = _paged(layer)
    a, sig = _opt_stream(after_stream, dev), _opt_stream(signal, dev)
    ids = block_id_array(block_ids)
    return copier(dev).scatter_paged(base, nb, page, stride, ids, src, a, after_event, sig)


def gather_dense(t: Any, t0: int, n: int, dst: Any, *, batch: int = 0, after_stream: Any = None,
                 after_event: Any = None) -> Any:
    """Tokens [t0, t0+n) of a CUDA [batch, heads, seq, head_dim] tensor -> ``dst`` head-major."""
    dev = device_of(t)
    base, shape, strides, es = dense_geometry(t, allow_cuda=True)
    s = _opt_stream(after_stream, dev)
    return copier(dev).gather_dense(base, shape, strides, es, batch, t0, n, dst, s, after_event)


def scatter_dense(t: Any, t0: int, n: int, src: Any, *, batch: int = 0, after_stream: Any = None,
                  after_event: Any = None, signal: Any = None) -> Any:
    dev = device_of(t)
    base, shape, strides, es = dense_geometry(t, allow_cuda=True)
    a, sig = _opt_stream(after_stream, dev), _opt_stream(signal, dev)
    return copier(dev).scatter_dense(base, shape, strides, es, batch, t0, n, src, a,
                                     after_event, sig)


def host_view(buffer: Any) -> np.ndarray:
    """A numpy uint8 view of a buffer (for tests and benchmarks)."""
    return np.frombuffer(buffer, np.uint8)


__all__ = ["CudaError", "CudaUnavailableError", "METHODS", "available", "copier", "device_of",
           "gather_dense", "gather_paged", "pin", "require", "scatter_dense", "scatter_paged",
           "status", "stream_handle"]
