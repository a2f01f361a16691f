# SPDX-License-Identifier: Apache-2.0
"""One chunk of one layer between an engine's KV and its staging segment, on the CPU (a
synchronous gather/scatter, :mod:`.copy`) or on a CUDA device (enqueued on the copy engine's
streams, :mod:`yrcache.cuda.copy`, with the ordering a :class:`GpuOrder` gives)."""
from __future__ import annotations

from typing import Any

from ..cuda import copy as cuda_copy
from ..tensors import dense_geometry, paged_geometry
from . import copy as cpu_copy
from .layout import KVLayout
from .staging import Staging


class GpuOrder:
    """How one copy of a CUDA tensor is ordered: after the work on ``after_stream`` (gathers) or
    after ``after_event`` (a load's scatters: recorded when the load was issued), with ``signal``
    (a stream) made to wait for it; enqueued copies' events are appended to ``events``."""

    __slots__ = ("after_event", "after_stream", "events", "signal")

    def __init__(self, after_stream: int | None, after_event: Any, signal: int | None,
                 events: list[Any] | None) -> None:
        self.after_stream, self.after_event, self.signal = after_stream, after_event, signal
        self.events: list[Any] = [] if events is None else events


def unsignalled(gpu: GpuOrder | None) -> bool:
    """CUDA copies no stream waits for: they must be waited for before they count."""
    return gpu is not None and gpu.signal is None


class ChunkCopier:
    """Copies chunk ``c`` of one layer to or from its segment (paged: the chunk's blocks' pages;
    dense: K then V), with ``copy_threads`` threads per CPU call."""

    def __init__(self, layout: KVLayout, chunk_tokens: int, seg_bytes: int, copy_threads: int,
                 staging: Staging) -> None:
        self.layout, self.chunk_tokens, self.seg_bytes = layout, chunk_tokens, seg_bytes
        self.copy_threads, self._staging = copy_threads, staging

    def copy(self, gather: bool, layer: Any, ids: Any, c: int, seg: memoryview, batch: int,
             gpu: GpuOrder | None = None) -> int:
        """Gather (or scatter) chunk ``c``; returns bytes. With ``gpu`` (CUDA tensors) the copies
        are enqueued and their events collected there."""
        if gpu is not None:
            self._staging.pin_for_cuda(
                cuda_copy.device_of(layer[0] if isinstance(layer, (tuple, list)) else layer))
        if self.layout.kind == "paged":
            fn = _gpu_paged(gather, gpu) if gpu is not None else \
                cpu_copy.gather_paged if gather else cpu_copy.scatter_paged
            return self._copy_paged(fn, layer, ids, c, seg)
        half, t0 = self.seg_bytes // 2, c * self.chunk_tokens
        dense = _gpu_dense(gather, gpu) if gpu is not None else \
            cpu_copy.gather_dense if gather else cpu_copy.scatter_dense
        return sum(dense(t, t0, self.chunk_tokens, part, batch=batch)
                   for t, part in zip(layer, (seg[:half], seg[half:])))

    def _copy_paged(self, fn: Any, layer: Any, ids: Any, c: int, seg: memoryview) -> int:
        per = self.chunk_tokens // self.layout.block_tokens
        mine = ids[c * per:(c + 1) * per]
        if mine.min() >= 0:
            return fn(layer, mine, seg, threads=self.copy_threads)
        page = self.layout.page_bytes   # a load that skips blocks (-1): copy the runs
        j = n = 0
        while j < per:
            if mine[j] < 0:
                j += 1
                continue
            k = j
            while k < per and mine[k] >= 0:
                k += 1
            n += fn(layer, mine[j:k], seg[j * page:k * page], threads=self.copy_threads)
            j = k
        return n


def _gpu_paged(gather: bool, gpu: GpuOrder) -> Any:
    """A paged copy function with the CPU one's signature that enqueues on the device."""
    def fn(layer: Any, ids: Any, seg: Any, *, threads: int = 0) -> int:
        if gather:
            ev = cuda_copy.gather_paged(layer, ids, seg, after_stream=gpu.after_stream,
                                        after_event=gpu.after_event)
        else:
            ev = cuda_copy.scatter_paged(layer, ids, seg, after_stream=gpu.after_stream,
                                         after_event=gpu.after_event, signal=gpu.signal)
        gpu.events.append(ev)
        return len(ids) * paged_geometry(layer, allow_cuda=True).page_bytes
    return fn


def _gpu_dense(gather: bool, gpu: GpuOrder) -> Any:
    """A dense copy function with the CPU one's signature that enqueues on the device."""
    def fn(t: Any, t0: int, n: int, part: Any, *, batch: int = 0) -> int:
        if gather:
            ev = cuda_copy.gather_dense(t, t0, n, part, batch=batch,
                                        after_stream=gpu.after_stream, after_event=gpu.after_event)
        else:
            ev = cuda_copy.scatter_dense(t, t0, n, part, batch=batch,
                                         after_stream=gpu.after_stream,
                                         after_event=gpu.after_event, signal=gpu.signal)
        gpu.events.append(ev)
        return dense_geometry(t, allow_cuda=True).token_bytes(n)
    return fn


__all__ = ["ChunkCopier", "GpuOrder", "unsignalled"]
