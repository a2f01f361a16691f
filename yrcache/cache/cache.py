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

import logging
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._args import U32_MAX, check_digest, check_digests, check_int
from .._native import _C
from .._util import EARLY, close_at_exit, forget_at_exit, prestart
from ..cuda import copy as cuda_copy
from ..store.format import align_up
from ..store.keys import Namespace, chain_keys, fold_extras
from ..store.store import Store
from ..tensors import tensor_info
from . import metrics
from .layout import KVLayout
from .loader import Loader, LoadFuture, LoadResult, fail_load
from .metrics import IoMeter, Metrics
from .parts import CacheParts, Operations
from .prefetch import Prefetcher
from .staging import Staging
from .tier import HostTier
from .transfer import ChunkCopier, GpuOrder
from .writer import StoreFuture, StoreResult, StoreWriter

logger = logging.getLogger(__name__)

#: threads one gather/scatter call may use (csrc/copy splits a call into at most 64 parts)
MAX_COPY_THREADS = 64


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
        prefetch_bytes: host memory for chunks read ahead of their load (:meth:`prefetch`;
            0: off). Allocated by the first prefetch (or :meth:`warm_up`), then reused.
        store_yield_s: when the smoothed latency of an object's put exceeds this (a slow or
            saturated file system), new async stores are dropped (``store_dropped_slow``) while
            others are still in flight; the next store after the backlog drains measures again.
            0: never.
        **store_args: passed to :class:`~yrcache.store.Store` (capacity_bytes, durable, ...).
    """

    def __init__(self, root: Any, namespace: Namespace, layout: KVLayout, *, mode: str = "async",
                 staging_bytes: int = 256 << 20, copy_threads: int = 0,
                 host_tier_bytes: int = 0, prefetch_bytes: int = 64 << 20,
                 store_yield_s: float = 2.0, **store_args: Any) -> None:
        if mode not in ("async", "sync"):
            raise ValueError(f"mode must be 'async' or 'sync', got {mode!r}")
        if not isinstance(namespace, Namespace):
            raise TypeError(f"namespace must be a Namespace (layout.namespace(model)), got "
                            f"{type(namespace).__name__}")
        if not isinstance(layout, KVLayout):
            raise TypeError(f"layout must be a KVLayout, got {type(layout).__name__}")
        check_int("copy_threads", copy_threads, 0, MAX_COPY_THREADS)
        check_int("host_tier_bytes", host_tier_bytes)
        check_int("prefetch_bytes", prefetch_bytes)
        if isinstance(store_yield_s, bool) or not isinstance(store_yield_s, (int, float)) or \
                not 0 <= store_yield_s <= 86400:
            raise ValueError(f"store_yield_s must be seconds in [0, 86400], got "
                             f"{store_yield_s!r:.40}")
        check_int("staging_bytes", staging_bytes, 1)
        _check_agrees(namespace, layout)
        self.namespace, self.layout, self.mode = namespace, layout, mode
        self.chunk_tokens = namespace.chunk_tokens
        self.copy_threads = copy_threads
        self.seg_bytes = layout.segment_bytes(self.chunk_tokens)
        stride = align_up(self.seg_bytes)
        self.store_ = Store(root, namespace, **store_args)
        self._staging = Staging(staging_bytes, self.seg_bytes, stride, layout.num_layers,
                                self.store_.engine)
        self._tier = HostTier(host_tier_bytes, stride * layout.num_layers)
        self._metrics = Metrics()
        self._meter = IoMeter()
        self._prefetch = Prefetcher(self.store_, self._metrics, self._meter,
                                    budget_bytes=prefetch_bytes,
                                    chunk_bytes=stride * layout.num_layers,
                                    seg_bytes=self.seg_bytes, stride=stride,
                                    num_layers=layout.num_layers)
        self._operations = Operations()
        self._parts = CacheParts(
            layout, mode, self.chunk_tokens, self.seg_bytes, self.store_, self._staging,
            self._tier, self._metrics,
            ChunkCopier(layout, self.chunk_tokens, self.seg_bytes, copy_threads, self._staging),
            self._operations, ThreadPoolExecutor(1, thread_name_prefix="yrcache-cache-commit"),
            self._prefetch, self._meter, IoMeter(), float(store_yield_s))
        self._loader = Loader(self._parts, stride)
        self._closed = False
        close_at_exit(self, tier=EARLY)   # a short-lived process does not lose its last stores

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
        return StoreWriter(self._parts, keys, kv, ids, parent, first_index, batch, dev, stream,
                           replace)

    def lookup_keys(self, keys: Sequence[bytes]) -> int:
        """Leading chunks of ``keys`` that can be loaded (host tier, staged, or stored)."""
        n = 0   # staging first: a published chunk enters the tier before its claim goes
        while n < len(keys) and (self._staging.is_ready(keys[n]) or keys[n] in self._tier):
            n += 1
        if n < len(keys):
            n += self.store_.lookup(keys[n:])
        return n

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
                    batch: int = 0, background: bool = False, stream: Any = None,
                    in_waiter: bool = False) -> LoadFuture:
        """Load chunks ``keys`` into ``kv``. Paged: ``block_ids`` holds each chunk's blocks in
        order; a block id of -1 leaves that block untouched (its tokens are already in place, e.g.
        computed by the engine), so a load may start or end inside a chunk. ``background``: a load
        nobody waits on right now (a parked request) runs on its own thread, so loads that a
        forward pass waits on never queue behind it; it does not block even in sync mode.
        CUDA tensors: the copies wait for the work enqueued on ``stream`` (default: torch's
        current stream) before this call, and ``stream`` waits for each copy, so kernels the
        caller enqueues after a layer's future completes see that layer. ``in_waiter`` (host
        memory, async): the copies run in the thread that waits, through
        ``LoadFuture.wait_layer(i)`` or ``result()``, not on yrcache's threads (a CPU engine's
        compute threads are then never preempted by them); the reads still run in the
        background. Such a load's layers complete only while someone waits through those."""
        self._check_open()
        keys = check_digests("keys", keys)
        ids = self._check_kv(kv, block_ids, len(keys), load=True, batch=batch)
        dev = self._kv_device(kv)
        gpu = None
        if dev >= 0:
            s = cuda_copy.stream_handle(stream, dev)
            # A parked load's copies must not hold up the compute stream (other requests run on
            # it meanwhile): no signal; its layers complete only once their copies are done.
            gpu = GpuOrder(None, cuda_copy.copier(dev).record(s), None if background else s, None)
        lf = LoadFuture(self.layout.num_layers)
        self._metrics.bump(loads=1, load_chunks=len(keys))
        self._operations.track(lf)
        try:
            self._loader.submit(lf, keys, kv, ids, batch, gpu, background,
                                in_waiter and not background and self.mode == "async")
        except RuntimeError as e:  # the loader was shut down by a concurrent close()
            fail_load(lf, _C.ClosedError(f"cache is closed ({e})"))
            raise _C.ClosedError("cache is closed") from e
        if self.mode == "sync" and not background:
            lf.exception()   # complete on return; a failure is on the future, not raised here
        return lf

    # -- read-ahead -------------------------------------------------------------------------------
    def prefetch(self, keys: Sequence[bytes], owner: str) -> int:
        """Read chunks ``keys`` into host memory now, verified, for a load that comes later (a
        request waiting in a queue): that load then copies them from memory. Chunks in the host
        tier are in memory already and are not read. Returns how many chunks will be in memory
        for the load: in the tier, or taken on (the rest did not fit ``prefetch_bytes``).
        ``owner`` (e.g. the request id) holds them until :meth:`release_prefetch`; chunks wanted
        by several owners are read once. Never raises for a cache fault: a chunk that cannot be
        read is simply not there when its load comes (the load reads the file, and fails on it
        as it would)."""
        self._check_open()
        keys = check_digests("keys", keys)
        if not isinstance(owner, str):
            raise TypeError(f"owner must be a str, got {type(owner).__name__}")
        cold = [k for k in keys if k not in self._tier]
        return len(keys) - len(cold) + self._prefetch.prefetch(owner, cold)

    def prefetched(self, keys: Sequence[bytes]) -> int:
        """Leading chunks of ``keys`` ready in memory: read ahead, or in the host tier."""
        keys = check_digests("keys", keys)
        n = 0
        while n < len(keys) and (keys[n] in self._tier or self._prefetch.ready(keys[n:n + 1])):
            n += 1
        return n

    def release_prefetch(self, owner: str) -> None:
        """``owner`` no longer needs what it prefetched (its load started, it was aborted or
        preempted); chunks nobody else wants are freed, reads not started are cancelled."""
        self._prefetch.release(owner)

    def read_rates(self) -> dict[str, float | None]:
        """Smoothed latency of one file read (s), bandwidth of whole loads (bytes/s; None until
        measured), and the age of the oldest read still out (s): what a planner weighs a load
        against recomputing with."""
        return self._meter.snapshot()

    def warm_up(self) -> None:
        """Pay every one-time cost now (an engine calls this at start-up) so that no request
        does: every worker thread started, the staging's pages faulted in, the prefetch memory
        allocated and registered."""
        self._check_open()
        self._staging.touch()
        self._prefetch.allocate(self.store_.engine)
        self._loader.prestart()
        prestart(self._parts.committer)
        self.store_.warm_up()

    # -- CUDA -------------------------------------------------------------------------------------
    def prepare_cuda(self, device: int = 0) -> None:
        """Pin the staging (cudaHostRegister) and create ``device``'s copy engine now, at
        startup, rather than on the first copy (pinning hundreds of MiB takes a while)."""
        self._check_open()
        cuda_copy.require(device)
        self._staging.pin_for_cuda(device)

    @staticmethod
    def _kv_device(kv: Sequence[Any]) -> int:
        """-1 when every tensor is in host memory, else the one CUDA device they are all on."""
        devs = {cuda_copy.device_of(t)
                for e in kv for t in (e if isinstance(e, (tuple, list)) else [e])}
        if len(devs) > 1:
            raise ValueError(f"kv spans several devices ({sorted(devs)}): one Cache call moves "
                             "one device's KV")
        dev = devs.pop() if devs else -1
        if dev >= 0:
            cuda_copy.require(dev)
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
            self._check_dense(kv, n_chunks, batch)
            return None
        if batch:
            raise ValueError(f"batch is for dense layouts; a paged layout takes block_ids "
                             f"(got batch={batch})")
        return self._check_block_ids(kv, block_ids, n_chunks, load=load)

    def _check_dense(self, kv: Sequence[Any], n_chunks: int, batch: int) -> None:
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

    def _check_block_ids(self, kv: Sequence[Any], block_ids: Any, n_chunks: int, *,
                         load: bool) -> Any:
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

    def counters(self) -> dict[str, int]:
        """The counters of :meth:`stats` alone (cheap: an engine reads them every step)."""
        return self._metrics.counters()

    def stats(self) -> dict[str, Any]:
        """Counters, latencies (p50/p99 of recent operations, seconds), staging and tier state,
        and the store's own stats under "store"."""
        d: dict[str, Any] = self._metrics.counters()
        d.update(self._tier.stats())
        d.update(self._prefetch.stats())
        d.update(self._meter.snapshot())
        d.update(self._metrics.latencies())
        d["chunks_being_stored"] = self._staging.chunks_in_flight   # the store queue depth
        d["operations_in_flight"] = len(self._operations)
        d["staging_free_store_slabs"] = self._staging.free_store_slabs
        d["staging_free_load_slabs"] = self._staging.free_load_slabs
        d["store"] = self.store_.stats()
        return d

    def prometheus_collector(self, registry: Any = None, *, prefix: str = "yrcache") -> Any:
        """Register (and return) a prometheus_client collector exporting :meth:`stats`: counters
        as ``<prefix>_<name>_total``, the rest as gauges, with the namespace as a label."""
        return metrics.prometheus_collector(self.stats, self.namespace.hex, registry,
                                            prefix=prefix)

    def close(self, timeout: float = 30.0) -> None:
        """Drain in-flight stores and loads (up to ``timeout`` s; stores that do not finish are
        counted as dropped), then close the store."""
        if self._closed:
            return
        self._closed = True
        try:
            self._drain(timeout)
        finally:
            self._loader.shutdown()
            self._prefetch.close()
            self._parts.committer.shutdown(wait=False)
            self._staging.close()
            self.store_.close()
            forget_at_exit(self)

    def _drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pending = self._operations.pending()
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
            self._metrics.bump(store_dropped_close=stores)
            self._loader.abandoned = True

    def _check_open(self) -> None:
        if self._closed:
            raise _C.ClosedError("cache is closed")

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dtype_name(t: Any) -> str | None:
    """"bfloat16" for torch.bfloat16 or a numpy float16 array's "float16"; None if unknown."""
    dt = getattr(t, "dtype", None)
    if dt is None:
        return None
    name = str(dt)
    return name[6:] if name.startswith("torch.") else getattr(dt, "name", name)


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
