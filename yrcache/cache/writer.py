# SPDX-License-Identifier: Apache-2.0
"""A store in progress: chunks claimed and staged up front, gathered layer by layer, then
published to the store (:meth:`Cache.begin_store <yrcache.cache.Cache.begin_store>`)."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from ..cuda import copy as cuda_copy
from ..futures import Future
from .parts import CacheParts
from .staging import StagedChunk, sync_all
from .transfer import GpuOrder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreResult:
    chunks: int      # full chunks in the request
    stored: int      # written by this call
    existing: int    # already stored (by this process or visible on disk): not written again
    dropped: int     # not stored: no free staging slab, or a load-only root
    failed: int      # not stored: the root was full, or a write failed (see stats)


class StoreFuture(Future[StoreResult]):
    """A store's outcome; ``source_released`` completes when the caller's KV may be reused."""

    __slots__ = ("source_released",)

    def __init__(self) -> None:
        super().__init__(what="cache.store")
        self.source_released: Future[None] = Future(what="cache.store.source_released")


_Chunk = tuple[int, bytes, StagedChunk]   # (position in keys, key, staging)


class StoreWriter:
    """A store in progress (:meth:`Cache.begin_store`): chunks are claimed and given staging slabs
    up front, each layer is gathered by :meth:`gather` (in the calling thread, as soon as the engine
    has written it), and :meth:`commit` hands the whole chunks to the store. :meth:`abort` (or a
    commit before every layer was gathered) drops them. Not thread-safe: one caller drives it."""

    def __init__(self, parts: CacheParts, keys: list[bytes], kv: Sequence[Any], ids: Any,
                 parent: bytes, first_index: int, batch: int, device: int = -1,
                 stream: Any = None, replace: Collection[bytes] = ()) -> None:
        self._p, self._keys, self._kv, self._ids = parts, keys, kv, ids
        self._parent, self._first, self._batch = parent, first_index, batch
        self._device, self._stream = device, stream
        self._events: list[Any] = []   # CUDA gathers still running
        self._chunks: list[_Chunk] = []
        self._gathered: set[int] = set()
        self._open = True
        self.existing = self.dropped = self.replaced = self.slow = 0
        self.future = StoreFuture()
        if parts.store.read_only:   # a load-only root: nothing to claim, gather or write
            self.dropped = len(keys)
            parts.metrics.bump(store_dropped_read_only=len(keys))
            keys = []
        self._stage(keys, replace)

    def _stage(self, keys: list[bytes], replace: Collection[bytes]) -> None:
        """Claim and stage each chunk not stored yet (one store per chunk in this process)."""
        staging = self._p.staging
        claimed_key: bytes | None = None
        behind = self._behind()   # once per store: a probe store is written whole
        try:
            for i, key in enumerate(keys):
                claimed = staging.claim(key)
                if claimed:
                    claimed_key = key
                if not claimed or (key not in replace and self._p.store.exists(key)):
                    self.existing += 1
                    if claimed:
                        staging.unclaim(key)
                    claimed_key = None
                    continue
                if behind:   # a slow file system: yield to loads, do not queue
                    self.dropped += 1
                    self.slow += 1
                    staging.unclaim(key)
                    continue
                st = staging.stage(key)
                if st is None:  # staging full: drop, never block the caller or grow memory
                    self.dropped += 1
                    staging.unclaim(key)
                    continue
                self._chunks.append((i, key, st))
                self.replaced += key in replace
                claimed_key = None
        except BaseException:
            if claimed_key is not None:   # claimed, not yet staged: release the claim too
                staging.unclaim(claimed_key)
            self.abort()
            raise

    def _behind(self) -> bool:
        """Async stores are far behind: the smoothed put latency is above the high-water mark
        and puts are still in flight. The first store after they drain goes ahead and measures
        again, so a file system that recovers gets stores back."""
        p = self._p
        lat = p.store_meter.latency_s
        return p.mode == "async" and p.store_yield_s > 0 and lat is not None and \
            lat > p.store_yield_s and p.staging.chunks_in_flight > 0

    @property
    def chunks(self) -> int:
        """Chunks this writer will write (not already stored, not dropped)."""
        return len(self._chunks)

    def gather(self, layer: int) -> None:
        """Copy layer ``layer`` of every claimed chunk into staging."""
        num_layers = self._p.layout.num_layers
        if not self._open:
            raise ValueError("this store was already committed or aborted")
        if not 0 <= layer < num_layers:
            raise ValueError(f"layer {layer} out of range [0, {num_layers})")
        gpu = None
        if self._device >= 0 and self._chunks:   # after what the caller's stream wrote so far
            gpu = GpuOrder(cuda_copy.stream_handle(self._stream, self._device), None, None,
                           self._events)
        for i, _, st in self._chunks:
            self._p.copier.copy(True, self._kv[layer], self._ids, i, st.views[layer], self._batch,
                                gpu)
        self._gathered.add(layer)

    def commit(self) -> StoreFuture:
        """Publish the chunks (in the background in async mode; durable on return in sync mode).
        CPU memory may be reused at once (every gather ran in :meth:`gather`); CUDA memory once
        ``future.source_released`` is done (the gathers' copies completed)."""
        p = self._p
        if not self._open:
            raise ValueError("this store was already committed or aborted")
        missing = p.layout.num_layers - len(self._gathered)   # nothing to gather: nothing missing
        if missing and self._chunks:
            self.abort()
            raise ValueError(f"commit with {missing} layers not gathered: the store is dropped")
        self._open = False
        chunks, self._chunks = self._chunks, []
        events, self._events = self._events, []
        if not events:
            self._publish(chunks)
        elif p.mode == "sync":
            self._publish(chunks, events)
        else:   # the device is still copying: wait for it on the commit thread, not here
            p.operations.track(self.future)
            try:
                p.committer.submit(self._publish_logged, chunks, events)
            except RuntimeError:   # closed meanwhile
                self._publish(chunks, events)
        if p.mode == "sync":
            self.future.result()
        return self.future

    def _publish_logged(self, chunks: list[_Chunk], events: Sequence[Any]) -> None:
        try:
            self._publish(chunks, events)
        except BaseException:   # on the commit thread nobody would see it
            logger.exception("yrcache: a store failed on the commit thread")

    def _publish(self, chunks: list[_Chunk], events: Sequence[Any] = ()) -> None:
        failed = ""
        for ev in events:   # every one: no slab goes back while a copy may still write into it
            try:
                ev.synchronize()   # the staging holds every gathered page (GIL released)
            except Exception as e:  # noqa: BLE001 - a device fault: this store is not trustworthy
                failed = failed or str(e)
        if failed:
            logger.warning("yrcache: store dropped, a GPU gather failed: %s", failed)
            self._drop_failed(chunks)
            return
        p = self._p
        puts: list[tuple[bytes, Future[bool], StagedChunk]] = []
        try:
            for j, (i, key, st) in enumerate(chunks):
                try:
                    put = p.store.put(key, st.views,
                                      parent=self._keys[i - 1] if i else self._parent,
                                      chunk_index=self._first + i,
                                      token_count=p.chunk_tokens, dtype=p.layout.dtype,
                                      shape=[p.seg_bytes], dedup=False)
                except BaseException:
                    for _, k, s in chunks[j:]:
                        p.staging.discard(k, s)
                    raise
                st.ready = True
                puts.append((key, put, st))
        finally:
            self.future.source_released.set_result(None)
            p.metrics.bump(stores=1, store_chunks=len(self._keys), store_existing=self.existing,
                           store_replaced=self.replaced,
                           store_dropped_staging=self.dropped - self.slow,
                           store_dropped_slow=self.slow,
                           bytes_gathered=len(puts) * p.seg_bytes * p.layout.num_layers)
            self._finish(puts)

    def _drop_failed(self, chunks: list[_Chunk]) -> None:
        """A gather failed: nothing of this store is published."""
        try:
            for _, k, s in chunks:
                self._p.staging.discard(k, s)
            self._p.metrics.bump(store_failed=len(chunks))
        finally:
            self.future.source_released.set_result(None)
            self.future.set_result(StoreResult(len(self._keys), 0, self.existing,
                                               self.dropped, len(chunks)))

    def _finish(self, puts: list[tuple[bytes, Future[bool], StagedChunk]]) -> None:
        """As each put completes: into the host tier if it was published, its slab recycled;
        after the last, the latency and the result."""
        p = self._p
        left = [len(puts)]
        tally = {"stored": 0, "failed": 0}
        lock = threading.Lock()
        t0 = time.perf_counter()
        obj_bytes = p.seg_bytes * p.layout.num_layers

        def one(key: bytes, st: StagedChunk, f: Future[bool]) -> None:
            ok = False
            try:
                p.store_meter.observe(time.perf_counter() - t0)
                ok = f.exception() is None and bool(f.result())
                if ok:
                    p.tier.put_copy(key, st.slab)
            finally:
                p.staging.published(key, st)
                with lock:
                    tally["stored" if ok else "failed"] += 1
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    p.metrics.record("store", time.perf_counter() - t0,
                                     tally["stored"] * obj_bytes)
                    self._complete(tally)

        if not puts:
            self._complete(tally)
            return
        p.operations.track(self.future)
        for key, put, st in puts:
            put.add_done_callback(lambda f, k=key, s=st: one(k, s, f))

    def _complete(self, tally: dict[str, int]) -> None:
        full = tally["failed"]  # a put returns False for a full root or an I/O error
        self._p.metrics.bump(store_failed=full)
        self.future.set_result(StoreResult(len(self._keys), tally["stored"], self.existing,
                                           self.dropped, full))

    def abort(self) -> None:
        """Drop the chunks not yet committed (their keys and slabs are released)."""
        if not self._open:
            return
        self._open = False
        self._sync_events()
        for _, key, st in self._chunks:
            self._p.staging.discard(key, st)
        self._p.metrics.bump(store_aborted=len(self._chunks))
        self._chunks = []
        self.future.source_released.set_result(None)
        self.future.set_result(StoreResult(len(self._keys), 0, self.existing, self.dropped, 0))

    def source_busy(self) -> bool:
        """True while a copy may still read the caller's KV (CUDA gathers in flight). A failed
        copy reads nothing any more (the store is dropped): not busy."""
        if not self._open:
            return not self.future.source_released.done()
        try:
            return any(not ev.query() for ev in self._events)
        except Exception:  # noqa: BLE001 - a device fault; the commit drops the store
            logger.warning("yrcache: a GPU gather failed", exc_info=True)
            return False

    def wait_source(self) -> None:
        """Block until no copy reads the caller's KV any more (e.g. before its blocks are
        reused); the store itself goes on."""
        if not self._open:
            self.future.source_released.exception()
            return
        sync_all(self._events)

    def _sync_events(self) -> None:
        for ev in self._events:   # a slab is free only when no copy still writes into it
            try:
                ev.synchronize()
            except Exception:  # noqa: BLE001 - the store is being dropped anyway
                logger.warning("yrcache: a GPU gather of an aborted store failed", exc_info=True)
        self._events = []


__all__ = ["StoreFuture", "StoreResult", "StoreWriter"]
