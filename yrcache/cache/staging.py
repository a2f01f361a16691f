# SPDX-License-Identifier: Apache-2.0
"""A Cache's staging memory and the chunks staged for a store.

Two pools of slabs bound the memory: store slabs (one whole chunk: every layer's segment at an
aligned stride) and load slabs (one segment), so loads never wait behind stores. A chunk being
stored is *claimed* (one store per chunk in this process), then *staged* in a store slab; loads
may copy from a staged chunk once it is ready (:meth:`Staging.pin`), so its slab goes back to the
pool only when the store is done with it and no load still copies from it. A load slab read by
device copies is recycled by a reaper thread once those copies completed.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

from ..cuda import copy as cuda_copy
from ..io.buffers import BufferPool
from ..io.engine import IoEngine

logger = logging.getLogger(__name__)


class StagedChunk:
    """A chunk claimed for a store: its slab and per-layer views once staged."""

    __slots__ = ("readers", "ready", "slab", "stored", "views")

    def __init__(self) -> None:
        self.views: list[memoryview] = []
        self.slab: Any = None
        self.ready = False    # gathered: its slab holds the whole chunk
        self.readers = 0      # loads copying from it right now
        self.stored = False   # the store is done with it


class Staging:
    """Store and load slabs out of ``staging_bytes`` (registered with ``engine``), the claimed
    chunks, and their pinning with CUDA."""

    def __init__(self, staging_bytes: int, seg_bytes: int, stride: int, num_layers: int,
                 engine: IoEngine) -> None:
        self.seg_bytes, self.stride, self.num_layers = seg_bytes, stride, num_layers
        obj = stride * num_layers
        if staging_bytes < obj + stride:
            raise ValueError(f"staging_bytes ({staging_bytes}) must hold at least one object "
                             f"({obj} bytes) and one segment")
        store_slabs = max(1, (staging_bytes // 2) // obj)
        self._store_pool = BufferPool(obj, store_slabs, engine)
        self._load_pool = BufferPool(stride, max(1, (staging_bytes - store_slabs * obj) // stride),
                                     engine)
        self._lock = threading.Lock()
        self._claimed: dict[bytes, StagedChunk] = {}   # chunks claimed, not yet published
        self._load_free = threading.Condition()
        self._reaper: threading.Thread | None = None   # recycles slabs after their H2D copies
        self._reap_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reaper_stopped = False
        self._cuda_devices: set[int] = set()   # devices whose copies use the pinned staging
        self._pin_lock = threading.Lock()

    def touch(self) -> None:
        """Fault every page of the staging in now (registration with io_uring already did, when
        it succeeded), not under the first request's copies."""
        self._store_pool.touch()
        self._load_pool.touch()

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def store_slabs(self) -> int:
        return self._store_pool.count

    @property
    def load_slabs(self) -> int:
        return self._load_pool.count

    @property
    def free_store_slabs(self) -> int:
        return self._store_pool.available

    @property
    def free_load_slabs(self) -> int:
        return self._load_pool.available

    @property
    def chunks_in_flight(self) -> int:
        """Chunks claimed by stores and not yet published (the store queue depth)."""
        with self._lock:
            return len(self._claimed)

    # -- claimed chunks ---------------------------------------------------------------------------
    def claim(self, key: bytes) -> bool:
        """Claim ``key`` for a store; False if another store of this process has it."""
        with self._lock:
            if key in self._claimed:
                return False
            self._claimed[key] = StagedChunk()
            return True

    def unclaim(self, key: bytes) -> None:
        with self._lock:
            self._claimed.pop(key, None)

    def stage(self, key: bytes) -> StagedChunk | None:
        """Give claimed ``key`` a store slab; None if none is free (the caller drops the chunk:
        a store never blocks or grows memory)."""
        slab = self._store_pool.acquire()
        if slab is None:
            return None
        with self._lock:
            st = self._claimed[key]
        st.slab = slab
        st.views = [slab[l * self.stride:l * self.stride + self.seg_bytes]
                    for l in range(self.num_layers)]
        return st

    def discard(self, key: bytes, st: StagedChunk) -> None:
        """Drop a staged chunk that will not be published: its claim and its slab."""
        self.unclaim(key)
        self._store_pool.release(st.slab)

    def published(self, key: bytes, st: StagedChunk) -> None:
        """The store is done with ``st`` (published or failed): unclaim it, and recycle its slab
        now or when the last load copying from it unpins it."""
        with self._lock:
            if self._claimed.get(key) is st:
                del self._claimed[key]
            st.stored = True
            free = st.readers == 0
        if free:
            self._store_pool.release(st.slab)

    def is_ready(self, key: bytes) -> bool:
        """``key`` is staged whole (loads may copy from it)."""
        with self._lock:
            st = self._claimed.get(key)
            return st is not None and st.ready

    def pin(self, key: bytes) -> StagedChunk | None:
        """Keep ``key``'s slab for a load copying from it (until :meth:`unpin`); None unless it
        is staged whole and not yet released by its store."""
        with self._lock:
            st = self._claimed.get(key)
            if st is None or not st.ready or st.stored:
                return None
            st.readers += 1
            return st

    def unpin(self, st: StagedChunk) -> None:
        with self._lock:
            st.readers -= 1
            free = st.readers == 0 and st.stored
        if free:
            self._store_pool.release(st.slab)

    # -- load slabs -------------------------------------------------------------------------------
    def acquire_load_slab(self) -> memoryview:
        """A load slab, waiting for one to be released if none is free."""
        with self._load_free:
            while True:
                slab = self._load_pool.acquire()
                if slab is not None:
                    return slab
                self._load_free.wait()

    def release_load_slab(self, slab: memoryview) -> None:
        with self._load_free:
            self._load_pool.release(slab)
            self._load_free.notify()

    def release_load_slab_after(self, events: Sequence[Any], slab: memoryview) -> None:
        """Recycle a load slab once the copies reading it are done. Waiting for them is handed to
        one reaper thread (copies complete in load-stream order), so the I/O completion threads
        never block on the device."""
        if not events:
            self.release_load_slab(slab)
            return
        with self._lock:   # with close(): no item can land behind its stop sentinel
            if not self._reaper_stopped:
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, daemon=True,
                                                    name="yrcache-cache-reaper")
                    self._reaper.start()
                self._reap_q.put((events, slab))
                return
        sync_all(events)   # close() has stopped the reaper: wait here
        self.release_load_slab(slab)

    def _reap(self) -> None:
        while True:
            item = self._reap_q.get()
            if item is None:
                return
            events, slab = item
            sync_all(events)
            self.release_load_slab(slab)

    def close(self) -> None:
        """Stop the reaper once it has recycled the slabs handed to it."""
        with self._lock:
            self._reaper_stopped = True
            if self._reaper is not None:
                self._reap_q.put(None)

    # -- CUDA -------------------------------------------------------------------------------------
    def pin_for_cuda(self, dev: int) -> None:
        """First CUDA copy on ``dev``: pin the staging arenas (cudaHostRegister, once)."""
        if dev in self._cuda_devices:
            return
        with self._pin_lock:   # not the claims' lock: pinning hundreds of MiB takes a while
            if dev in self._cuda_devices:
                return
            for pool in (self._store_pool, self._load_pool):
                if not getattr(pool, "cuda_pinned", False):
                    cuda_copy.pin(pool.arena, dev)   # portable: every device can use it
                    pool.cuda_pinned = True
            logger.info("yrcache: GPU KV on cuda:%d moves through %d MiB of pinned staging "
                        "(copy method %s); objects are verified on the host", dev,
                        (self._store_pool.arena.nbytes + self._load_pool.arena.nbytes) >> 20,
                        cuda_copy.copier(dev).method)
            self._cuda_devices.add(dev)


def sync_all(events: Sequence[Any]) -> None:
    """Wait for device copies; a failed one is logged (the data it moved is suspect)."""
    for ev in events:
        try:
            ev.synchronize()
        except Exception:  # noqa: BLE001 - a device fault; logged, the caller's data is suspect
            logger.exception("yrcache: a GPU copy failed")


__all__ = ["StagedChunk", "Staging", "sync_all"]
