# SPDX-License-Identifier: Apache-2.0
"""The Cache API for serving loops: KV in an engine's memory <-> objects in a (shared) cache root.

>>> layout = KVLayout.paged("vllm-cpu-paged", num_layers=32, dtype="bfloat16", kv_heads=8,
...                         head_size=128, block_tokens=16, page_bytes=65536)
>>> cache = Cache("/mnt/shared/kv", layout.namespace("llama-3-8b@rev"), layout, mode="async")
>>> n = cache.lookup(token_ids)                         # leading tokens present (whole chunks)
>>> lf = cache.load(token_ids[:n], kv, block_ids)       # per-layer futures
>>> for i, layer in enumerate(model.layers):
...     lf.layer(i).result(); h = layer(h)              # layer i computes while later ones load
>>> sf = cache.store(token_ids, kv, block_ids)          # async: returns once the KV is copied out
>>> sf.source_released.result()                         # the caller may reuse the blocks now

Async store gathers each chunk into a staging slab in the calling thread (CPU: a memcpy per page,
no extra threads competing with the model), then the file writes continue in the background;
sync store returns when the objects are durable. A load reads layer-major (layer 0 of every chunk,
then layer 1, ...), and scatters each verified segment as it arrives; layer i's future completes
when every chunk's layer i is in place. Staging memory is bounded: a store that finds no free slab
is dropped and counted (never blocks, never grows memory); loads have their own slabs, so they
never wait behind stores. A fault (missing or corrupt object, I/O error) makes a load partial:
``result().tokens`` says how many leading tokens arrived; the caller recomputes the rest.

CUDA tensors (paged or dense) take the GPU data path (:mod:`yrcache.cuda`): the staging slabs are
pinned with cudaHostRegister on first use; a gather runs on the device's offload stream after the
work already enqueued on the caller's stream (``stream``, default torch's current stream) and the
file writes start when it completes, on a commit thread, so ``gather`` and ``commit`` never wait
for the device; a load's scatters run on the load stream after the work enqueued before the load
was issued, and each one makes the caller's stream wait for it, so a layer's future completes as
soon as its bytes are read and verified and its copy is enqueued: the compute stream, not the
host, waits for the copy.
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import copy as C
from ..cuda import copy as G
from ..tensors import dense_geometry, paged_geometry, tensor_info
from .._args import U32_MAX, check_digest, check_digests, check_int
from ..store.format import align_up
from ..futures import Future
from ..io.engine import HostBuffer
from ..store.keys import Namespace, chain_keys, fold_extras
from .layout import KVLayout
from ..io.buffers import BufferPool
from ..store.store import Store

logger = logging.getLogger(__name__)

#: threads one gather/scatter call may use (csrc/copy splits a call into at most 64 parts)
MAX_COPY_THREADS = 64


@dataclass(frozen=True)
class StoreResult:
    chunks: int      # full chunks in the request
    stored: int      # written by this call
    existing: int    # already stored (by this process or visible on disk): not written again
    dropped: int     # not stored: no free staging slab, or a load-only root
    failed: int      # not stored: the root was full, or a write failed (see stats)


@dataclass(frozen=True)
class LoadResult:
    tokens: int      # leading tokens whose KV is in place in every layer
    chunks: int      # chunks asked for
    loaded: int      # leading chunks loaded (tokens = loaded * chunk_tokens)
    reason: str = ""  # why a chunk failed ("missing", "corrupt: ...", "error: ...")


class _Gpu:
    """How one copy of a CUDA tensor is ordered: after the work on ``after_stream`` (gathers) or
    after ``after_event`` (a load's scatters: recorded when the load was issued), with ``signal``
    (a stream) made to wait for it; enqueued copies' events are appended to ``events``."""

    __slots__ = ("after_event", "after_stream", "events", "signal")

    def __init__(self, after_stream: int | None, after_event: Any, signal: int | None,
                 events: list[Any] | None) -> None:
        self.after_stream, self.after_event, self.signal = after_stream, after_event, signal
        self.events: list[Any] = [] if events is None else events


class _Staged:
    """A chunk gathered into a store slab, until its object is published."""

    __slots__ = ("readers", "ready", "slab", "stored", "views")

    def __init__(self, views: list[memoryview], slab: Any) -> None:
        self.views, self.slab = views, slab
        self.ready = False    # gathered: its slab holds the whole chunk
        self.readers = 0      # loads copying from it right now
        self.stored = False   # the store is done with it


class StoreFuture(Future[StoreResult]):
    """A store's outcome; ``source_released`` completes when the caller's KV may be reused."""

    __slots__ = ("source_released",)

    def __init__(self) -> None:
        super().__init__(what="cache.store")
        self.source_released: Future[None] = Future(what="cache.store.source_released")


class LoadFuture(Future[LoadResult]):
    """A load's outcome, with one future per layer (``layer(i)``), completed as soon as that
    layer's segments of every chunk are in place (or known missing)."""

    __slots__ = ("_layers",)

    def __init__(self, num_layers: int) -> None:
        super().__init__(what="cache.load")
        self._layers: list[Future[None]] = [Future(what=f"cache.load.layer{i}")
                                            for i in range(num_layers)]

    def layer(self, i: int) -> Future[None]:
        return self._layers[i]


class StoreWriter:
    """A store in progress (:meth:`Cache.begin_store`): chunks are claimed and given staging slabs
    up front, each layer is gathered by :meth:`gather` (in the calling thread, as soon as the engine
    has written it), and :meth:`commit` hands the whole chunks to the store. :meth:`abort` (or a
    commit before every layer was gathered) drops them. Not thread-safe: one caller drives it."""

    def __init__(self, cache: Cache, keys: list[bytes], kv: Sequence[Any], ids: Any,
                 parent: bytes, first_index: int, batch: int, device: int = -1,
                 stream: Any = None, replace: Collection[bytes] = ()) -> None:
        self._c, self._keys, self._kv, self._ids = cache, keys, kv, ids
        self._parent, self._first, self._batch = parent, first_index, batch
        self._device, self._stream = device, stream
        self._events: list[Any] = []   # CUDA gathers still running
        self._chunks: list[tuple[int, bytes, _Staged]] = []   # (position in keys, key, staging)
        self._gathered: set[int] = set()
        self._open = True
        self.existing = self.dropped = self.replaced = 0
        self.future = StoreFuture()
        claimed_key: bytes | None = None
        if cache.read_only:   # a load-only root: nothing to claim, gather or write
            self.dropped = len(keys)
            cache._bump(store_dropped_read_only=len(keys))
            keys = []
        try:
            for i, key in enumerate(keys):
                with cache._lock:  # claim the key: one store per chunk in this process
                    claimed = key not in cache._inflight
                    if claimed:
                        cache._inflight[key] = _Staged([], None)
                        claimed_key = key
                if not claimed or (key not in replace and cache.store_.exists(key)):
                    self.existing += 1
                    if claimed:
                        cache._unclaim(key)
                    claimed_key = None
                    continue
                slab = cache._spool.acquire()
                if slab is None:  # staging full: drop, never block the caller or grow memory
                    self.dropped += 1
                    cache._unclaim(key)
                    continue
                st = cache._inflight[key]
                st.slab = slab
                st.views = [slab[l * cache._stride:l * cache._stride + cache.seg_bytes]
                            for l in range(cache.layout.num_layers)]
                self._chunks.append((i, key, st))
                self.replaced += key in replace
                claimed_key = None
        except BaseException:
            if claimed_key is not None:   # claimed, not yet staged: release the claim too
                cache._unclaim(claimed_key)
            self.abort()
            raise

    @property
    def chunks(self) -> int:
        """Chunks this writer will write (not already stored, not dropped)."""
        return len(self._chunks)

    def gather(self, layer: int) -> None:
        """Copy layer ``layer`` of every claimed chunk into staging."""
        c = self._c
        if not self._open:
            raise ValueError("this store was already committed or aborted")
        if not 0 <= layer < c.layout.num_layers:
            raise ValueError(f"layer {layer} out of range [0, {c.layout.num_layers})")
        gpu = None
        if self._device >= 0 and self._chunks:   # after what the caller's stream wrote so far
            gpu = _Gpu(G.stream_handle(self._stream, self._device), None, None, self._events)
        for i, _, st in self._chunks:
            c._copy(True, self._kv[layer], self._ids, i, st.views[layer], self._batch, gpu)
        self._gathered.add(layer)

    def commit(self) -> StoreFuture:
        """Publish the chunks (in the background in async mode; durable on return in sync mode).
        CPU memory may be reused at once (every gather ran in :meth:`gather`); CUDA memory once
        ``future.source_released`` is done (the gathers' copies completed)."""
        c = self._c
        if not self._open:
            raise ValueError("this store was already committed or aborted")
        missing = c.layout.num_layers - len(self._gathered)   # nothing to gather: nothing missing
        if missing and self._chunks:
            self.abort()
            raise ValueError(f"commit with {missing} layers not gathered: the store is dropped")
        self._open = False
        chunks, self._chunks = self._chunks, []
        events, self._events = self._events, []
        if not events:
            self._publish(chunks)
        elif c.mode == "sync":
            self._publish(chunks, events)
        else:   # the device is still copying: wait for it on the commit thread, not here
            c._track(self.future)
            try:
                c._committer.submit(self._publish_logged, chunks, events)
            except RuntimeError:   # closed meanwhile
                self._publish(chunks, events)
        if c.mode == "sync":
            self.future.result()
        return self.future

    def _publish_logged(self, chunks: list[tuple[int, bytes, _Staged]],
                        events: Sequence[Any]) -> None:
        try:
            self._publish(chunks, events)
        except BaseException:   # on the commit thread nobody would see it
            logger.exception("yrcache: a store failed on the commit thread")

    def _publish(self, chunks: list[tuple[int, bytes, _Staged]], events: Sequence[Any] = ()) -> None:
        c = self._c
        puts: list[tuple[bytes, Future[bool], _Staged]] = []
        failed = ""
        for ev in events:   # every one: no slab goes back while a copy may still write into it
            try:
                ev.synchronize()   # the staging holds every gathered page (GIL released)
            except Exception as e:  # noqa: BLE001 - a device fault: this store is not trustworthy
                failed = failed or str(e)
        if failed:
            logger.warning("yrcache: store dropped, a GPU gather failed: %s", failed)
            try:
                for _, k, s in chunks:
                    c._unclaim(k)
                    c._spool.release(s.slab)
                c._bump(store_failed=len(chunks))
            finally:
                self.future.source_released.set_result(None)
                self.future.set_result(StoreResult(len(self._keys), 0, self.existing,
                                                   self.dropped, len(chunks)))
            return
        try:
            for j, (i, key, st) in enumerate(chunks):
                try:
                    put = c.store_.put(key, st.views,
                                       parent=self._keys[i - 1] if i else self._parent,
                                       chunk_index=self._first + i,
                                       token_count=c.chunk_tokens, dtype=c.layout.dtype,
                                       shape=[c.seg_bytes], dedup=False)
                except BaseException:
                    for _, k, s in chunks[j:]:
                        c._unclaim(k)
                        c._spool.release(s.slab)
                    raise
                st.ready = True
                puts.append((key, put, st))
        finally:
            self.future.source_released.set_result(None)
            c._bump(stores=1, store_chunks=len(self._keys), store_existing=self.existing,
                    store_replaced=self.replaced, store_dropped_staging=self.dropped,
                    bytes_gathered=len(puts) * c.seg_bytes * c.layout.num_layers)
            c._finish_store(self.future, puts, len(self._keys), self.existing, self.dropped)

    def abort(self) -> None:
        """Drop the chunks not yet committed (their keys and slabs are released)."""
        if not self._open:
            return
        self._open = False
        c = self._c
        self._sync_events()
        for _, key, st in self._chunks:
            c._unclaim(key)
            c._spool.release(st.slab)
        c._bump(store_aborted=len(self._chunks))
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
        _sync_all(self._events)

    def _sync_events(self) -> None:
        for ev in self._events:   # a slab is free only when no copy still writes into it
            try:
                ev.synchronize()
            except Exception:  # noqa: BLE001 - the store is being dropped anyway
                logger.warning("yrcache: a GPU gather of an aborted store failed", exc_info=True)
        self._events = []


_COUNTERS = ("stores", "store_chunks", "store_existing", "store_replaced",
             "store_dropped_staging", "store_dropped_read_only", "store_failed", "store_aborted", "store_dropped_close", "loads", "load_chunks",
             "load_partial", "load_from_inflight", "load_tier_hits", "bytes_gathered",
             "bytes_scattered")


class Cache:
    """KV cache offload for one model worker (one namespace) on one cache root.

    Args:
        root: the cache directory (local or shared file system).
        namespace: what the objects' bytes depend on; see :meth:`KVLayout.namespace`. Must agree
            with ``layout``.
        layout: how the engine holds its KV (:class:`~yrcache.cache.layout.KVLayout`).
        mode: ``"async"`` (store returns once the KV is copied out; load returns at once with
            per-layer futures) or ``"sync"`` (store returns when durable; load when complete).
        staging_bytes: bound on staging memory, split between stores and loads.
        copy_threads: threads per gather/scatter call (0: the calling thread).
        host_tier_bytes: a bounded LRU of recently stored/loaded chunks in host memory in front
            of the files (0: off). Only chunks that were published or read back verified enter
            it, so it never holds KV that does not exist (or did not exist) as a valid object.
        **store_args: passed to :class:`~yrcache.store.Store` (capacity_bytes, durable, ...).
    """

    def __init__(self, root: Any, namespace: Namespace, layout: KVLayout, *, mode: str = "async",
                 staging_bytes: int = 256 << 20, copy_threads: int = 0,
                 host_tier_bytes: int = 0, **store_args: Any) -> None:
        if mode not in ("async", "sync"):
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        if not isinstance(namespace, Namespace):
            raise TypeError(f"namespace must be a Namespace (layout.namespace(model)), got "
                            f"{type(namespace).__name__}")
        if not isinstance(layout, KVLayout):
            raise TypeError(f"layout must be a KVLayout, got {type(layout).__name__}")
        check_int("copy_threads", copy_threads, 0, MAX_COPY_THREADS)
        check_int("host_tier_bytes", host_tier_bytes)
        check_int("staging_bytes", staging_bytes, 1)
        _check_agrees(namespace, layout)
        self.namespace, self.layout, self.mode = namespace, layout, mode
        self.chunk_tokens = namespace.chunk_tokens
        self.copy_threads = copy_threads
        self.seg_bytes = layout.segment_bytes(self.chunk_tokens)
        self._stride = align_up(self.seg_bytes)
        self._lengths = [self.seg_bytes] * layout.num_layers
        self.store_ = Store(root, namespace, **store_args)
        engine = self.store_.engine
        obj = self._stride * layout.num_layers
        if staging_bytes < obj + self._stride:
            raise ValueError(f"staging_bytes ({staging_bytes}) must hold at least one object "
                             f"({obj} bytes) and one segment")
        store_slabs = max(1, (staging_bytes // 2) // obj)
        self._spool = BufferPool(obj, store_slabs, engine)
        self._lpool = BufferPool(self._stride, max(1, (staging_bytes - store_slabs * obj)
                                                   // self._stride), engine)
        self._lcond = threading.Condition()
        self._lock = threading.Lock()
        self._stats: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._inflight: dict[bytes, _Staged] = {}   # chunks staged, not yet published
        self._pending: set[Future[Any]] = set()
        self._loader = ThreadPoolExecutor(2, thread_name_prefix="yrcache-cache-load")
        self._bg_loader = ThreadPoolExecutor(1, thread_name_prefix="yrcache-cache-bgload")
        # CUDA stores: waits for the device's gathers, then hands the chunks to the store
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="yrcache-cache-commit")
        self._cuda_devices: set[int] = set()   # devices whose copies use the pinned staging
        self._pin_lock = threading.Lock()
        self._reaper: threading.Thread | None = None   # recycles slabs after their H2D copies
        self._reap_q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed_reaper = False
        self._tier_max = host_tier_bytes
        self._tier: OrderedDict[bytes, np.ndarray] = OrderedDict()   # key -> all layers' bytes
        self._tier_bytes = 0
        # recent operations: (seconds, bytes moved)
        self._lat: dict[str, deque[tuple[float, int]]] = {"store": deque(maxlen=2048),
                                                          "load": deque(maxlen=2048)}
        self._closed = False
        self._closed_hard = False   # close() gave up waiting: loads stop issuing reads
        _OPEN.add(self)

    @property
    def read_only(self) -> bool:
        """The root is load-only (not writable here, or ``read_only=True``): stores are dropped
        (``StoreResult.dropped``, counter ``store_dropped_read_only``), loads work."""
        return self.store_.read_only

    # -- keys -------------------------------------------------------------------------------------
    def keys(self, token_ids: Any, *, extras: Mapping[str, Any] | None = None) -> list[bytes]:
        """Chain keys of the full chunks of ``token_ids`` (extras: LoRA, multimodal, salt...)."""
        return chain_keys(self._root(extras), token_ids, self.chunk_tokens)

    def lookup(self, token_ids: Any, *, extras: Mapping[str, Any] | None = None) -> int:
        """Leading tokens whose KV can be loaded (a multiple of chunk_tokens): chunks in the host
        tier or still being stored by this process, then the store."""
        return self.lookup_keys(self.keys(token_ids, extras=extras)) * self.chunk_tokens

    # -- store ------------------------------------------------------------------------------------
    def store(self, token_ids: Any, kv: Sequence[Any], block_ids: Any = None, *,
              extras: Mapping[str, Any] | None = None, batch: int = 0,
              stream: Any = None) -> StoreFuture:
        """Store the KV of the full chunks of ``token_ids``. ``kv``: one entry per layer (paged: the
        layer's block tensor; dense: a (K, V) pair). ``block_ids`` (paged): the blocks holding the
        tokens in order, at least one per ``block_tokens`` tokens. CUDA tensors: the copies start
        after the work already enqueued on ``stream`` (default: torch's current stream)."""
        self._check_open()
        w = self.begin_store(self.keys(token_ids, extras=extras), kv, block_ids,
                             parent=self._root(extras), batch=batch, stream=stream)
        try:
            for l in range(self.layout.num_layers):
                w.gather(l)
        except BaseException:
            w.abort()
            raise
        return w.commit()

    def begin_store(self, keys: Sequence[bytes], kv: Sequence[Any], block_ids: Any = None, *,
                    parent: bytes, first_index: int = 0, batch: int = 0,
                    stream: Any = None, replace: Collection[bytes] = ()) -> StoreWriter:
        """Store chunks ``keys`` (chunk ``first_index`` onwards of a chain whose previous key, or
        root, is ``parent``) layer by layer: ``gather(l)`` as soon as layer ``l`` is written (an
        engine calls it from its forward pass), then ``commit()``. ``block_ids`` (paged) hold the
        chunks' blocks in order, ``chunk_tokens // block_tokens`` per chunk. CUDA tensors: each
        ``gather(l)`` copies after the work enqueued on ``stream`` so far (default: torch's current
        stream at that call), so it sees the layer the engine just wrote. ``replace``: keys to
        write even if an object exists (a load of it failed: what is there may be damaged, and a
        store that skipped it would leave the damage for the next reader)."""
        self._check_open()
        keys = check_digests("keys", keys)
        parent = check_digest("parent", parent)
        first_index = check_int("first_index", first_index, 0, U32_MAX + 1 - len(keys))
        replace = frozenset(check_digests("replace", replace))
        ids = self._check_kv(kv, block_ids, len(keys), load=False, batch=batch)
        dev = self._kv_device(kv)
        return StoreWriter(self, keys, kv, ids, parent, first_index, batch, dev, stream, replace)

    def lookup_keys(self, keys: Sequence[bytes]) -> int:
        """Leading chunks of ``keys`` that can be loaded (host tier, staged, or stored)."""
        n = 0
        with self._lock:
            while n < len(keys) and (keys[n] in self._tier or (
                    keys[n] in self._inflight and self._inflight[keys[n]].ready)):
                n += 1
        if n < len(keys):
            n += self.store_.lookup(keys[n:])
        return n

    def _unclaim(self, key: bytes) -> None:
        with self._lock:
            self._inflight.pop(key, None)

    def _finish_store(self, fut: StoreFuture, puts: list[tuple[bytes, Future[bool], _Staged]],
                      n: int, existing: int, dropped: int) -> None:
        left = [len(puts)]
        tally = {"stored": 0, "failed": 0}
        lock = threading.Lock()
        t0 = time.perf_counter()
        obj_bytes = self.seg_bytes * self.layout.num_layers

        def one(key: bytes, st: _Staged, f: Future[bool]) -> None:
            ok = False
            try:
                ok = f.exception() is None and bool(f.result())
                if ok:
                    self._tier_put(key, st.slab)
            finally:
                with self._lock:
                    if self._inflight.get(key) is st:
                        del self._inflight[key]
                    st.stored = True
                    free = st.readers == 0
                if free:
                    self._spool.release(st.slab)
                with lock:
                    tally["stored" if ok else "failed"] += 1
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    with self._lock:
                        self._lat["store"].append((time.perf_counter() - t0,
                                                   tally["stored"] * obj_bytes))
                    self._complete_store(fut, n, existing, dropped, tally)

        if not puts:
            self._complete_store(fut, n, existing, dropped, tally)
            return
        self._track(fut)
        for key, put, st in puts:
            put.add_done_callback(lambda f, k=key, s=st: one(k, s, f))

    def _complete_store(self, fut: StoreFuture, n: int, existing: int, dropped: int,
                        tally: dict[str, int]) -> None:
        full = tally["failed"]  # a put returns False for a full root or an I/O error
        self._bump(store_failed=full)
        fut.set_result(StoreResult(n, tally["stored"], existing, dropped, full))

    # -- load -------------------------------------------------------------------------------------
    def load(self, token_ids: Any, kv: Sequence[Any], block_ids: Any = None, *,
             extras: Mapping[str, Any] | None = None, batch: int = 0,
             stream: Any = None) -> LoadFuture:
        """Load the KV of the full chunks of ``token_ids`` (normally the prefix :meth:`lookup`
        matched) into ``kv`` at ``block_ids``. Returns a LoadFuture (per-layer futures); in sync
        mode it is complete on return."""
        return self.load_chunks(self.keys(token_ids, extras=extras), kv, block_ids, batch=batch,
                                stream=stream)

    def load_chunks(self, keys: Sequence[bytes], kv: Sequence[Any], block_ids: Any = None, *,
                    batch: int = 0, background: bool = False, stream: Any = None) -> LoadFuture:
        """Load chunks ``keys`` into ``kv``. Paged: ``block_ids`` holds each chunk's blocks in
        order; a block id of -1 leaves that block untouched (its tokens are already in place, e.g.
        computed by the engine), so a load may start or end inside a chunk. ``background``: a load
        nobody waits on right now (a parked request) runs on its own thread, so loads that a
        forward pass waits on never queue behind it; it does not block even in sync mode.
        CUDA tensors: the copies wait for the work enqueued on ``stream`` (default: torch's
        current stream) before this call, and ``stream`` waits for each copy, so kernels the
        caller enqueues after a layer's future completes see that layer."""
        self._check_open()
        keys = check_digests("keys", keys)
        ids = self._check_kv(kv, block_ids, len(keys), load=True, batch=batch)
        dev = self._kv_device(kv)
        gpu = None
        if dev >= 0:
            s = G.stream_handle(stream, dev)
            # A parked load's copies must not hold up the compute stream (other requests run on
            # it meanwhile): no signal; its layers complete only once their copies are done.
            gpu = _Gpu(None, G.copier(dev).record(s), None if background else s, None)
        lf = LoadFuture(self.layout.num_layers)
        self._bump(loads=1, load_chunks=len(keys))
        self._track(lf)
        try:
            (self._bg_loader if background else self._loader).submit(
                self._load_guarded, lf, keys, kv, ids, batch, gpu)
        except RuntimeError as e:  # the loader was shut down by a concurrent close()
            from .._native import _C
            self._fail_load(lf, _C.ClosedError(f"cache is closed ({e})"))
            raise _C.ClosedError("cache is closed") from e
        if self.mode == "sync" and not background:
            lf.exception()   # complete on return; a failure is on the future, not raised here
        return lf

    def _load_guarded(self, lf: LoadFuture, *args: Any) -> None:
        try:
            self._load_run(lf, *args)
        except BaseException as e:  # a bug: surface it on the futures, never hang the caller
            logger.exception("yrcache: load failed")
            self._fail_load(lf, e)

    @staticmethod
    def _fail_load(lf: LoadFuture, e: BaseException) -> None:
        for f in [*lf._layers, lf]:
            if not f.done():
                f.set_exception(e)

    def _load_run(self, lf: LoadFuture, keys: list[bytes], kv: Sequence[Any], ids: Any,
                  batch: int, gpu: _Gpu | None) -> None:
        """Reads go out layer-major (layer 0 of every chunk, then layer 1...), as many at once as
        there are load slabs; each verified segment is scattered as it arrives, and layer futures
        complete in order as soon as every chunk's segment of that layer is in place."""
        n, nl = len(keys), self.layout.num_layers
        state = threading.Lock()
        first_bad, reason = [n], [""]      # chunks from here on are not (all) in place
        left = [n] * nl                    # segments of each layer still outstanding
        next_layer = [0]                   # layer futures are completed in order
        all_done = threading.Event()
        t0 = time.perf_counter()
        tiered = [self._tier_get(k) for k in keys]
        # Copies for the host tier of chunks not in it: at most what the tier can hold, and a
        # copy enters the tier only when every layer of it was filled from verified bytes.
        room = self._tier_max // (self._stride * nl)
        filling: list[np.ndarray | None] = []
        for c in range(n):
            want = tiered[c] is None and room > 0
            room -= want
            filling.append(self._tier_slot() if want else None)
        filled = [0] * n

        def finish(l: int, c: int, ok: bool, why: str, src: memoryview | None) -> None:
            if ok and src is not None and filling[c] is not None:
                filling[c][l * self._stride:l * self._stride + self.seg_bytes] = \
                    np.frombuffer(src, np.uint8)
            ready: list[int] = []
            with state:
                if ok:
                    filled[c] += 1
                elif c < first_bad[0]:
                    first_bad[0], reason[0] = c, why
                elif c == first_bad[0] and reason[0] == "missing" and why.startswith("corrupt"):
                    reason[0] = why   # a corrupt object, removed while its other layers loaded
                left[l] -= 1
                while next_layer[0] < nl and left[next_layer[0]] == 0:
                    ready.append(next_layer[0])
                    next_layer[0] += 1
                if next_layer[0] == nl:
                    all_done.set()
            for r in ready:
                lf.layer(r).set_result(None)

        if n == 0:
            for l in range(nl):
                lf.layer(l).set_result(None)
            all_done.set()
        for l in range(nl):
            for c in range(n):
                if self._closed_hard or c > first_bad[0]:  # beyond the first failure: skip
                    finish(l, c, False, reason[0] or "skipped", None)
                    continue
                hot = tiered[c]
                if hot is not None:  # in the host tier: no file read
                    seg = memoryview(hot)[l * self._stride:l * self._stride + self.seg_bytes]
                    ok, why, evs = self._scatter_safe(kv[l], ids, c, seg, batch, gpu)
                    _sync_all(evs if _unsignalled(gpu) else [])
                    finish(l, c, ok, why, seg)   # pageable source: staged by the driver at once
                    continue
                st = self._pin_staged(keys[c])
                if st is not None:  # being stored by this process: its staging is whole
                    try:
                        ok, why, evs = self._scatter_safe(kv[l], ids, c, st.views[l], batch, gpu)
                        if _unsignalled(gpu):
                            _sync_all(evs)
                        finish(l, c, ok, why, st.views[l])
                        _sync_all(evs)
                    finally:
                        self._unpin_staged(st)
                    self._bump(load_from_inflight=1)
                    continue
                slab = self._acquire_load_slab()
                seg = slab[:self.seg_bytes]
                try:
                    g = self.store_.get(keys[c], [seg], layers=[l], lengths=self._lengths)
                except BaseException as e:  # e.g. closed meanwhile: this chunk fails
                    self._release_load_slab(slab)
                    finish(l, c, False, f"error: {e}", None)
                    continue
                g.add_done_callback(lambda f, l=l, c=c, seg=seg, slab=slab:
                                    self._on_segment(f, kv[l], ids, l, c, seg, slab, batch,
                                                     finish, gpu))
        all_done.wait()
        loaded = first_bad[0]
        if loaded < n:
            self._bump(load_partial=1)
        for c in range(loaded):
            if filling[c] is not None and filled[c] == nl:
                self._tier_insert(keys[c], filling[c])
        with self._lock:
            self._stats["load_tier_hits"] += sum(t is not None for t in tiered[:loaded])
            self._lat["load"].append((time.perf_counter() - t0, loaded * self.seg_bytes * nl))
        lf.set_result(LoadResult(loaded * self.chunk_tokens, n, loaded, reason[0]))

    def _scatter_safe(self, layer: Any, ids: Any, c: int, seg: memoryview, batch: int,
                      gpu: _Gpu | None) -> tuple[bool, str, list[Any]]:
        """Scatter one segment; on CUDA the copy is enqueued (its events are returned: the source
        must stay untouched until they complete)."""
        mine = None if gpu is None else _Gpu(None, gpu.after_event, gpu.signal, None)
        try:
            self._bump(bytes_scattered=self._copy(False, layer, ids, c, seg, batch, mine))
        except Exception as e:  # noqa: BLE001 - this chunk fails; the load goes on
            _sync_all(mine.events if mine else [])
            return False, f"error: {e}", []
        return True, "", mine.events if mine else []

    # A chunk staged for a store may be read by loads meanwhile: its slab goes back to the pool
    # only when the store is done with it and no load is still copying from it.
    def _pin_staged(self, key: bytes) -> _Staged | None:
        with self._lock:
            st = self._inflight.get(key)
            if st is None or not st.ready or st.stored:
                return None
            st.readers += 1
            return st

    def _unpin_staged(self, st: _Staged) -> None:
        with self._lock:
            st.readers -= 1
            free = st.readers == 0 and st.stored
        if free:
            self._spool.release(st.slab)

    def _on_segment(self, f: Future[Any], layer: Any, ids: Any, l: int, c: int,
                    seg: memoryview, slab: Any, batch: int, finish: Any,
                    gpu: _Gpu | None) -> None:
        evs: list[Any] = []
        try:
            exc = f.exception()
            r = None if exc is not None else f.result()
            if r:
                ok, why, evs = self._scatter_safe(layer, ids, c, seg, batch, gpu)
                if _unsignalled(gpu):   # nobody's stream waits for it: done before it counts
                    _sync_all(evs)
            else:
                ok, why = False, str(exc) if exc is not None else r.reason
            if ok:
                finish(l, c, True, "", seg)   # copies seg into a tier slot first, if any
            else:
                finish(l, c, False, why, None)
        finally:
            self._release_after(evs, slab)   # the device may still be reading the slab

    def _release_after(self, events: list[Any], slab: memoryview) -> None:
        """Recycle a load slab once the copies reading it are done. Waiting for them is handed to
        one reaper thread (copies complete in load-stream order), so the I/O completion threads
        never block on the device."""
        if not events:
            self._release_load_slab(slab)
            return
        with self._lock:   # with close(): no item can land behind its stop sentinel
            if not self._closed_reaper:
                if self._reaper is None:
                    self._reaper = threading.Thread(target=self._reap, daemon=True,
                                                    name="yrcache-cache-reaper")
                    self._reaper.start()
                self._reap_q.put((events, slab))
                return
        _sync_all(events)   # close() has stopped the reaper: wait here
        self._release_load_slab(slab)

    def _reap(self) -> None:
        while True:
            item = self._reap_q.get()
            if item is None:
                return
            events, slab = item
            _sync_all(events)
            self._release_load_slab(slab)

    def _acquire_load_slab(self) -> memoryview:
        with self._lcond:
            while True:
                slab = self._lpool.acquire()
                if slab is not None:
                    return slab
                self._lcond.wait()

    def _release_load_slab(self, slab: memoryview) -> None:
        with self._lcond:
            self._lpool.release(slab)
            self._lcond.notify()

    # -- copy -------------------------------------------------------------------------------------
    def _copy(self, gather: bool, layer: Any, ids: Any, c: int, seg: memoryview,
              batch: int, gpu: _Gpu | None = None) -> int:
        """Chunk c of one layer <-> its segment (paged: its blocks' pages; dense: K then V).
        With ``gpu`` (CUDA tensors) the copies are enqueued and their events collected there."""
        if gpu is not None:
            self._cuda_ready(G.device_of(layer[0] if isinstance(layer, (tuple, list)) else layer))
        if self.layout.kind == "paged":
            per = self.chunk_tokens // self.layout.block_tokens
            fn = C.gather_paged if gather else C.scatter_paged
            if gpu is not None:
                fn = _gpu_paged(gather, gpu)
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
        half, t0 = self.seg_bytes // 2, c * self.chunk_tokens
        dense = C.gather_dense if gather else C.scatter_dense
        if gpu is not None:
            dense = _gpu_dense(gather, gpu)
        return sum(dense(t, t0, self.chunk_tokens, part, batch=batch)
                   for t, part in zip(layer, (seg[:half], seg[half:])))

    def prepare_cuda(self, device: int = 0) -> None:
        """Pin the staging (cudaHostRegister) and create ``device``'s copy engine now, at
        startup, rather than on the first copy (pinning hundreds of MiB takes a while)."""
        self._check_open()
        G.require(device)
        self._cuda_ready(device)

    def _cuda_ready(self, dev: int) -> None:
        """First CUDA copy on ``dev``: pin the staging arenas (cudaHostRegister, once)."""
        if dev in self._cuda_devices:
            return
        with self._pin_lock:   # not the cache lock: pinning hundreds of MiB takes a while
            if dev in self._cuda_devices:
                return
            for pool in (self._spool, self._lpool):
                if not getattr(pool, "cuda_pinned", False):
                    G.pin(pool.arena, dev)   # portable: every device can use it
                    pool.cuda_pinned = True
            logger.info("yrcache: GPU KV on cuda:%d moves through %d MiB of pinned staging "
                        "(copy method %s); objects are verified on the host", dev,
                        (self._spool.arena.nbytes + self._lpool.arena.nbytes) >> 20,
                        G.copier(dev).method)
            self._cuda_devices.add(dev)

    # -- host tier --------------------------------------------------------------------------------
    def _tier_get(self, key: bytes) -> np.ndarray | None:
        if not self._tier_max:
            return None
        with self._lock:
            hot = self._tier.get(key)
            if hot is not None:
                self._tier.move_to_end(key)
            return hot

    def _tier_slot(self) -> np.ndarray | None:
        # Page-aligned host memory (HostBuffer): what the GPU path registers with CUDA (pinned).
        obj = self._stride * self.layout.num_layers
        return np.frombuffer(HostBuffer(obj), np.uint8) if 0 < obj <= self._tier_max else None

    def _tier_put(self, key: bytes, slab: Any) -> None:
        slot = self._tier_slot() if self._tier_max else None
        if slot is not None:
            slot[:] = np.frombuffer(slab, np.uint8)
            self._tier_insert(key, slot)

    def _tier_insert(self, key: bytes, data: np.ndarray) -> None:
        with self._lock:
            if key in self._tier:
                return
            self._tier[key] = data
            self._tier_bytes += data.nbytes
            while self._tier_bytes > self._tier_max:
                _, old = self._tier.popitem(last=False)
                self._tier_bytes -= old.nbytes

    @staticmethod
    def _kv_device(kv: Sequence[Any]) -> int:
        """-1 when every tensor is in host memory, else the one CUDA device they are all on."""
        devs = {G.device_of(t) for e in kv for t in (e if isinstance(e, (tuple, list)) else [e])}
        if len(devs) > 1:
            raise ValueError(f"kv spans several devices ({sorted(devs)}): one Cache call moves "
                             "one device's KV")
        dev = devs.pop() if devs else -1
        if dev >= 0:
            G.require(dev)
        return dev

    def _check_kv(self, kv: Sequence[Any], block_ids: Any, n_chunks: int, *, load: bool,
                  batch: int) -> Any:
        if not isinstance(kv, Sequence) or isinstance(kv, (str, bytes)):
            raise TypeError(f"kv must be a sequence with one entry per layer (paged: the layer's "
                            f"block tensor; dense: a (K, V) pair), got {type(kv).__name__}")
        check_int("batch", batch)
        if len(kv) != self.layout.num_layers:
            raise ValueError(f"kv has {len(kv)} layers, the layout {self.layout.num_layers}")
        for i, entry in enumerate(kv):
            for t in (entry if self.layout.kind == "dense" and isinstance(entry, (tuple, list))
                      else [entry]):
                name = _dtype_name(t)
                if name is not None and name != self.layout.dtype and \
                        not (self.layout.kind == "paged" and name == "uint8"):
                    raise ValueError(f"kv[{i}] is {name}, the layout is {self.layout.dtype}")
                if load and isinstance(t, np.ndarray) and not t.flags.writeable:
                    raise ValueError(f"kv[{i}] is read-only: a load writes into it")
        if self.layout.kind == "dense":
            for i, pair in enumerate(kv):
                if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                    raise ValueError(f"dense kv[{i}] must be a (K, V) pair")
                for t in pair:
                    info = tensor_info(t, allow_cuda=True)
                    if len(info.shape) != 4 or info.shape[1] != self.layout.kv_heads or \
                            info.shape[3] != self.layout.head_size or \
                            info.elem_bytes != self.layout.elem_bytes:
                        raise ValueError(f"dense kv[{i}] has shape {info.shape} and "
                                         f"{info.elem_bytes}-byte elements; the layout wants "
                                         f"[batch, {self.layout.kv_heads}, seq, "
                                         f"{self.layout.head_size}] of {self.layout.dtype}")
                    if info.shape[2] < n_chunks * self.chunk_tokens:
                        raise ValueError(f"dense kv[{i}] holds {info.shape[2]} tokens, "
                                         f"{n_chunks * self.chunk_tokens} needed")
                    if batch >= info.shape[0]:
                        raise ValueError(f"batch {batch} out of range: dense kv[{i}] has "
                                         f"{info.shape[0]} rows")
            return None
        if batch:
            raise ValueError(f"batch is for dense layouts; a paged layout takes block_ids "
                             f"(got batch={batch})")
        blocks = None
        for i, t in enumerate(kv):
            info = tensor_info(t, allow_cuda=True)
            page = info.elem_bytes * int(np.prod(info.shape[1:], dtype=np.int64))
            if page != self.layout.page_bytes:
                raise ValueError(f"kv[{i}] has {page}-byte blocks, the layout "
                                 f"{self.layout.page_bytes}")
            blocks = info.shape[0] if blocks is None else min(blocks, info.shape[0])
        if block_ids is None:
            raise ValueError("a paged layout needs block_ids")
        raw = np.asarray(block_ids)
        if raw.dtype.kind not in "iu":
            raise TypeError(f"block_ids must be integers, got {raw.dtype}")
        ids = np.ascontiguousarray(raw, dtype=np.int64)
        need = n_chunks * (self.chunk_tokens // self.layout.block_tokens)
        if ids.ndim != 1 or ids.size < need:
            raise ValueError(f"block_ids must list at least {need} blocks for {n_chunks} chunks, "
                             f"got shape {ids.shape}")
        ids = ids[:need]
        lo = -1 if load else 0   # a load may skip blocks (-1)
        if need and (int(ids.min()) < lo or int(ids.max()) >= (blocks or 0)):
            raise ValueError(f"block ids out of range [{lo}, {blocks})")
        real = ids[ids >= 0]
        if load and np.unique(real).size != real.size:
            raise ValueError("block_ids repeat a block: two chunks would land in one place")
        return ids

    # -- misc -------------------------------------------------------------------------------------
    def _root(self, extras: Mapping[str, Any] | None) -> bytes:
        return fold_extras(self.namespace.digest, extras)

    def _track(self, f: Future[Any]) -> None:
        with self._lock:
            self._pending.add(f)

        def done(_: Future[Any]) -> None:
            with self._lock:
                self._pending.discard(f)
        f.add_done_callback(done)

    def _bump(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self._stats[k] += v

    def stats(self) -> dict[str, Any]:
        """Counters, latencies (p50/p99 of recent operations, seconds), staging and tier state,
        and the store's own stats under "store"."""
        with self._lock:
            d: dict[str, Any] = dict(self._stats)
            d["host_tier_bytes"], d["host_tier_chunks"] = self._tier_bytes, len(self._tier)
            for op, q in self._lat.items():
                xs = sorted(t for t, _ in q)
                d[f"{op}_latency_p50_s"] = xs[len(xs) // 2] if xs else None
                d[f"{op}_latency_p99_s"] = xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else None
                secs = sum(t for t, _ in q)
                d[f"{op}_bandwidth_Bps"] = sum(b for _, b in q) / secs if secs > 0 else None
            d["chunks_being_stored"] = len(self._inflight)   # the store queue depth
            d["operations_in_flight"] = len(self._pending)
        d["staging_free_store_slabs"] = self._spool.available
        d["staging_free_load_slabs"] = self._lpool.available
        d["store"] = self.store_.stats()
        return d

    def prometheus_collector(self, registry: Any = None, *, prefix: str = "yrcache") -> Any:
        """Register (and return) a prometheus_client collector exporting :meth:`stats`: counters
        as ``<prefix>_<name>_total``, the rest as gauges, with the namespace as a label."""
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cache, ns = self, self.namespace.hex

        class _Collector:
            def collect(self) -> Any:
                st = cache.stats()
                store = st.pop("store")
                flat = {**st, **{f"store_{k}": v for k, v in store.items()}}
                for name, v in sorted(flat.items()):
                    if isinstance(v, dict):
                        fam = CounterMetricFamily(f"{prefix}_{name}", name, labels=["ns", "key"])
                        for k, n in v.items():
                            fam.add_metric([ns, str(k)], n)
                        yield fam
                    elif isinstance(v, (int, float)) and not isinstance(v, bool):
                        gauge = name.startswith(("staging_", "host_tier_", "store_index",
                                                 "store_usage", "store_capacity", "chunks_being",
                                                 "operations_in")) or \
                            name.endswith(("_s", "_Bps"))
                        fam = (GaugeMetricFamily if gauge else CounterMetricFamily)(
                            f"{prefix}_{name}", name, labels=["ns"])
                        fam.add_metric([ns], v)
                        yield fam

        collector = _Collector()
        (registry or REGISTRY).register(collector)
        return collector

    def close(self, timeout: float = 30.0) -> None:
        """Drain in-flight stores and loads (up to ``timeout`` s; stores that do not finish are
        counted as dropped), then close the store."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        try:
            while True:
                with self._lock:
                    pending = list(self._pending)
                if not pending or time.monotonic() >= deadline:
                    break
                try:
                    pending[0]._wait(max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
            if pending:
                stores = sum(isinstance(f, StoreFuture) for f in pending)
                logger.warning("yrcache: %d cache operations (%d stores) did not finish within "
                               "%.0fs of close()", len(pending), stores, timeout)
                self._bump(store_dropped_close=stores)
                self._closed_hard = True
        finally:
            self._loader.shutdown(wait=False)
            self._bg_loader.shutdown(wait=False)
            self._committer.shutdown(wait=False)
            with self._lock:
                self._closed_reaper = True
                if self._reaper is not None:
                    self._reap_q.put(None)
            self.store_.close()
            _OPEN.discard(self)

    def _check_open(self) -> None:
        if self._closed:
            from .._native import _C
            raise _C.ClosedError("cache is closed")

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unsignalled(gpu: _Gpu | None) -> bool:
    return gpu is not None and gpu.signal is None


def _sync_all(events: Sequence[Any]) -> None:
    for ev in events:
        try:
            ev.synchronize()
        except Exception:  # noqa: BLE001 - a device fault; logged, the caller's data is suspect
            logger.exception("yrcache: a GPU copy failed")


def _gpu_paged(gather: bool, gpu: _Gpu) -> Any:
    """A paged copy function with the CPU one's signature that enqueues on the device."""
    def fn(layer: Any, ids: Any, seg: Any, *, threads: int = 0) -> int:
        if gather:
            ev = G.gather_paged(layer, ids, seg, after_stream=gpu.after_stream,
                                after_event=gpu.after_event)
        else:
            ev = G.scatter_paged(layer, ids, seg, after_stream=gpu.after_stream,
                                 after_event=gpu.after_event, signal=gpu.signal)
        gpu.events.append(ev)
        return len(ids) * paged_geometry(layer, allow_cuda=True).page_bytes
    return fn


def _gpu_dense(gather: bool, gpu: _Gpu) -> Any:
    def fn(t: Any, t0: int, n: int, part: Any, *, batch: int = 0) -> int:
        if gather:
            ev = G.gather_dense(t, t0, n, part, batch=batch, after_stream=gpu.after_stream,
                                after_event=gpu.after_event)
        else:
            ev = G.scatter_dense(t, t0, n, part, batch=batch, after_stream=gpu.after_stream,
                                 after_event=gpu.after_event, signal=gpu.signal)
        gpu.events.append(ev)
        return dense_geometry(t, allow_cuda=True).token_bytes(n)
    return fn


def _dtype_name(t: Any) -> str | None:
    """"bfloat16" for torch.bfloat16 or a numpy float16 array's "float16"; None if unknown."""
    dt = getattr(t, "dtype", None)
    if dt is None:
        return None
    name = str(dt)
    return name[6:] if name.startswith("torch.") else getattr(dt, "name", name)


_OPEN: weakref.WeakSet[Cache] = weakref.WeakSet()


def _close_all() -> None:
    """A short-lived process does not silently lose its last stores: drain them at exit."""
    for c in list(_OPEN):
        try:
            c.close()
        except Exception as e:  # noqa: BLE001
            logger.warning("yrcache: closing a cache at exit failed: %s", e)


# Runs before concurrent.futures' own exit hook (which joins worker threads without a bound), so
# close()'s 30 s limit holds at exit too; plain atexit where that hook does not exist.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_all)
else:  # pragma: no cover
    atexit.register(_close_all)


def _check_agrees(ns: Namespace, layout: KVLayout) -> None:
    pairs = [("num_layers", ns.num_layers, layout.num_layers), ("dtype", ns.dtype, layout.dtype),
             ("kv_heads", ns.kv_heads, layout.kv_heads), ("head_size", ns.head_size,
                                                          layout.head_size),
             ("layout", ns.layout, layout.name), ("block_tokens", ns.block_tokens,
                                                  layout.block_tokens),
             ("page_bytes", ns.page_bytes, layout.page_bytes)]
    bad = [f"{n}: namespace {a!r} vs layout {b!r}" for n, a, b in pairs if a != b]
    if bad:
        raise ValueError("namespace and layout disagree (" + "; ".join(bad) + "); use "
                         "layout.namespace(model)")


__all__ = ["Cache", "LoadFuture", "LoadResult", "StoreFuture", "StoreResult", "StoreWriter"]
