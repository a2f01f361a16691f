# SPDX-License-Identifier: Apache-2.0
"""The connector's worker side (each vLLM worker process): KV tensors <-> yrcache.Cache.

Per step: ``bind`` claims the step's stores (``Cache.begin_store``), ``start_load`` starts every
load (all layers at once, layer-major reads), ``wait_for_layer_load(i)`` waits for layer i only,
``save_layer(i)`` gathers layer i of the step's new full chunks into staging right after the
forward pass wrote it, ``wait_for_save`` commits them (async: files are written in the background;
sync: durable before it returns). Queued requests' chunks are read ahead into memory (prefetch) when
the scheduler asks; a load takes what is ready and reads the rest from the files. Failed loads are
reported as block ids (vLLM recomputes them), and the same request's stores of that step are
dropped: their KV was computed over the failed blocks. A finished request's tail (its whole blocks
past its last whole chunk, one block per object) is stored through a second Cache on the tail
namespace, gathered at once in ``bind`` (its KV is all computed), and loaded after the chunks.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ...cache.cache import Cache, LoadFuture, StoreFuture, StoreWriter
from ...io.engine import IoEngine
from . import compat
from .config import ConnectorConfig
from .metadata import LoadOp, PrefetchOp, StoreOp, YRCacheMetadata, YRCacheStats, YRCacheWorkerMeta
from .spaces import Deployment, RankSpace

logger = logging.getLogger("yrcache.vllm")

_STAT_KEYS = ("load_chunks", "load_partial", "load_tier_hits", "bytes_scattered", "store_chunks",
              "store_existing", "store_dropped_staging", "store_dropped_slow", "store_failed",
              "store_aborted", "bytes_gathered", "prefetch_chunks", "prefetch_read",
              "prefetch_shared", "prefetch_hits", "prefetch_late", "prefetch_failed",
              "prefetch_budget_full", "prefetch_cancelled", "prefetch_wasted",
              "prefetch_evicted")
_TAIL_STAT_KEYS = ("load_chunks", "store_chunks", "store_existing", "store_failed",
                   "store_dropped_staging")
_MAX_SAMPLES = 4096
#: how often an idle worker sends its read meter to the scheduler (s)
RATES_EVERY_S = 0.5


T = TypeVar("T")


def _timed(fn: Callable[..., T]) -> Callable[..., T]:
    """Count the CPU time a hook costs the model's thread (the benchmark reports it)."""
    @functools.wraps(fn)
    def run(self: WorkerSide, *a: Any, **k: Any) -> T:
        t0 = time.thread_time()
        try:
            return fn(self, *a, **k)
        finally:
            self.hook_cpu_s += time.thread_time() - t0
    return run


@dataclass
class _Load:
    op: LoadOp
    lf: LoadFuture | None           # the chunks (None: the hit lies all in the tail)
    tail: LoadFuture | None = None  # the tail's blocks
    reported: bool = False
    started: float = field(default_factory=time.perf_counter)

    def futures(self) -> list[LoadFuture]:
        return [f for f in (self.lf, self.tail) if f is not None]

    def done(self) -> bool:
        return all(f.done() for f in self.futures())


def _outcome(f: LoadFuture | None) -> tuple[int, str]:
    """(chunks loaded, why the rest was not) of a finished load."""
    if f is None:
        return 0, ""
    exc = f.exception()
    r = f.result() if exc is None else None
    return (r.loaded, r.reason) if r is not None else (0, f"error: {exc}")


class _RootUnusableError(Exception):
    """The Cache on the root cannot be set up: an OSError (the root is missing, not a directory,
    not accessible; or staging memory cannot be had)."""


class WorkerSide:
    def __init__(self, vllm_config: Any, cfg: ConnectorConfig, dep: Deployment) -> None:
        tp, _, pp, _ = compat.parallel_ranks()
        self.cfg, self.dep = cfg, dep
        self.space: RankSpace = dep.space(tp, pp)
        self.hex = self.space.ns.hex
        self.per = dep.chunk_tokens // dep.block_tokens
        self.cache: Cache | None = None
        #: the tail namespace's cache: one block per object (None when a chunk is one block)
        self.tail_cache: Cache | None = None
        self._engine: IoEngine | None = None
        self.disabled = ""
        self._layers: dict[str, int] = {}
        self._kv: list[Any] = []
        self._meta: YRCacheMetadata | None = None
        self._step_loads: list[_Load] = []          # under this step's forward pass
        self._parked: dict[str, _Load] = {}         # parked requests' loads, across steps
        self._writers: list[tuple[StoreOp, StoreWriter]] = []
        # Stores of a step whose forward pass read loaded chunks, in a multi-rank deployment:
        # another rank's load may have failed (and, through the all-reduce, tainted this rank's
        # new KV), so they wait until the scheduler has seen every worker's report of that step.
        self._held: dict[int, list[tuple[StoreOp, StoreWriter]]] = {}
        self._multi_rank = len(dep.spaces) > 1
        self._parked_failed: set[str] = set()   # parked loads that never started
        self._delayed: set[str] = set()
        # CUDA KV: gathers run on the device's copy stream after the step; a finished request's
        # blocks are released to vLLM only when no gather reads them any more
        self._async_gathers = False
        self._sources: dict[str, list[StoreWriter]] = {}
        self._errors: set[int] = set()
        self._lock = threading.Lock()               # report fields: store callbacks run elsewhere
        self._report = YRCacheWorkerMeta()
        self._last_stats: dict[str, int] = {}
        self._disabled_reported = False
        self.hook_cpu_s = 0.0
        #: seconds the model's thread waited for loaded layers (storage on the critical path)
        self.load_wait_s = 0.0
        self._wait_mark = 0.0
        self._prefetching: dict[str, tuple[int, list[bytes]]] = {}   # rid -> (first chunk, keys)
        self._prefetch_sent: dict[str, int] = {}
        self._release: list[str] = []     # read-ahead to drop once this step's loads claimed it
        #: latency samples (seconds) for /metrics, sent with the next stats
        self._samples: dict[str, list[float]] = {"load_seconds": [], "store_seconds": []}
        self._rates_sent: tuple[Any, ...] = ()
        self._rates_at = 0.0

    # -- setup ------------------------------------------------------------------------------------
    def register(self, kv_caches: dict[str, Any]) -> None:
        try:
            self._register(kv_caches)
        except _RootUnusableError as e:   # as the scheduler side does
            if self.cfg.on_bad_root == "fail":
                raise ValueError(f"yrcache connector: {e} (on_bad_root='serve' serves without "
                                 f"the cache instead)") from None
            self.disabled = str(e)
            logger.error("yrcache: connector DISABLED on this worker: %s", self.disabled)
        except Exception as e:  # noqa: BLE001 - never take vLLM down: disable, loudly
            self.disabled = f"worker setup for namespace {self.hex[:12]} failed: {e}"
            logger.error("yrcache: connector DISABLED on this worker: %s", self.disabled)

    def _register(self, kv_caches: dict[str, Any]) -> None:
        layout = self.space.layout
        names = sorted(kv_caches, key=compat.layer_index)
        if len(names) != layout.num_layers:
            raise ValueError(f"{len(names)} KV layers, the namespace has {layout.num_layers}")
        idx = [compat.layer_index(n) - self.space.ns.first_layer for n in names]
        if idx != list(range(layout.num_layers)):
            raise ValueError(f"layer indices {idx[:4]}... are not this stage's "
                             f"{self.space.ns.first_layer}..")
        blocks = None
        for n in names:
            t = kv_caches[n]
            if compat.dtype_name(t.dtype) != layout.dtype:
                raise ValueError(f"{n} is {t.dtype}, the namespace says {layout.dtype}")
            nb, page, _ = compat.tensor_page(t)   # raises unless each block is one page
            if page != layout.page_bytes:
                raise ValueError(f"{n} has {page}-byte pages, the namespace {layout.page_bytes}")
            if t.dim() == 4 and not self.dep.mla and (
                    int(t.shape[1]) != layout.kv_heads or int(t.shape[2]) != layout.block_tokens
                    or int(t.shape[3]) != 2 * layout.head_size):
                raise ValueError(f"{n} has shape {list(t.shape)}, the namespace wants "
                                 f"[blocks, {layout.kv_heads}, {layout.block_tokens}, "
                                 f"{2 * layout.head_size}]")
            if blocks is not None and nb != blocks:
                raise ValueError(f"layers have different block counts ({blocks}, {nb})")
            blocks = nb
        self._layers = {n: i for i, n in enumerate(names)}
        self._kv = [kv_caches[n] for n in names]
        devs = {str(t.device) for t in self._kv}
        if len(devs) != 1:
            raise ValueError(f"KV layers on several devices: {sorted(devs)}")
        self._async_gathers = self._kv[0].device.type == "cuda"
        self._engine = IoEngine(self.cfg.backend)
        try:
            cache = Cache(self.cfg.root, self.space.ns, layout, mode=self.cfg.mode,
                          staging_bytes=self.cfg.staging_bytes,
                          host_tier_bytes=self.cfg.host_tier_bytes, engine=self._engine,
                          prefetch_bytes=self.cfg.prefetch_bytes,
                          store_yield_s=self.cfg.store_yield_s,
                          capacity_bytes=self.cfg.capacity_bytes or None)
        except OSError as e:   # the root (missing, a file, no permission), or memory
            raise _RootUnusableError(f"the cache on root {self.cfg.root!r} could not be set up: "
                                f"{e}") from e
        try:   # every one-time cost now, at engine start-up, not in the first request
            cache.warm_up()
        except BaseException:
            cache.close()
            raise
        if self._async_gathers:   # pin the staging now, not inside the first forward pass
            try:
                cache.prepare_cuda(self._kv[0].device.index or 0)
            except BaseException:
                cache.close()
                raise
        self.cache = cache
        if self.space.tail_ns is not None:
            self.tail_cache = self._tail_cache(layout)
        logger.info("yrcache: worker tp%d/pp%d ready: %s mode, %d layers, %d-byte pages, "
                    "chunks of %d tokens, namespace %s, backend %s, root %s",
                    self.space.tp_rank, self.space.pp_rank, self.cfg.mode, layout.num_layers,
                    layout.page_bytes, self.dep.chunk_tokens, self.hex[:12],
                    self._engine.backend, self.cfg.root)

    def _tail_cache(self, layout: Any) -> Cache:
        """The tail namespace's cache, sharing the I/O engine; staging for the tails of a few
        requests finishing in one step."""
        assert self.space.tail_ns is not None
        block = layout.segment_bytes(self.dep.block_tokens) * layout.num_layers
        staging = min(self.cfg.staging_bytes, max(16 << 20, 64 * self.per * block))
        tc = Cache(self.cfg.root, self.space.tail_ns, layout, mode=self.cfg.mode,
                   staging_bytes=staging, engine=self._engine, prefetch_bytes=0,
                   store_yield_s=self.cfg.store_yield_s,
                   capacity_bytes=self.cfg.capacity_bytes or None)
        try:
            tc.warm_up()
            if self._async_gathers:
                tc.prepare_cuda(self._kv[0].device.index or 0)
        except BaseException:
            tc.close()
            raise
        return tc

    # -- per step ---------------------------------------------------------------------------------
    def handle_preemptions(self, meta: Any) -> None:
        # A preempted request's blocks are reused from this step on: nothing may still write
        # into them (a parked load) or read them (gathers are synchronous on CPU).
        if isinstance(meta, YRCacheMetadata):
            for rid in meta.preempted:
                ld = self._parked.get(rid)
                for f in ld.futures() if ld is not None else ():
                    f.exception()         # waits; a failure is reported in get_finished
                for w in self._sources.pop(rid, []):
                    w.wait_source()       # CUDA: gathers still reading its blocks

    @_timed
    def bind(self, meta: Any) -> None:
        self._meta = meta if isinstance(meta, YRCacheMetadata) else None
        if self._meta is None:
            return
        self._delayed.update(self._meta.delayed)
        self._release.extend(self._meta.released)
        for op in self._meta.prefetches:
            self._prefetch(op)
        for step, clean in self._meta.settled.items():
            for op, w in self._held.pop(step, []):
                self._commit(op, w, drop=not clean)
        if self.cache is None or not self.space.writer:
            return
        for op in self._meta.stores:
            keys = op.keys.get(self.hex)
            if not keys:
                continue
            if op.tail:
                self._store_tail(op, keys)
                continue
            if self.cache.read_only:   # a load-only root: nothing is stored, nothing pending
                self._note(unpublished=keys)
                continue
            lo, hi = (max(0, c - op.first_chunk) for c in op.replace)
            try:
                w = self.cache.begin_store(keys, self._kv, op.block_ids,
                                           parent=op.parents[self.hex],
                                           first_index=op.first_chunk, replace=keys[lo:hi])
            except Exception as e:  # noqa: BLE001 - a store fault is counted, never raised
                logger.warning("yrcache: store of request %s not started: %s", op.req_id, e)
                self._note(unpublished=keys)
                continue
            if w.chunks == 0:       # all stored already (or no staging): report and go on
                self._finish_store(op, keys, w.commit())
                continue
            self._writers.append((op, w))
            if self._async_gathers:
                self._sources.setdefault(op.req_id, []).append(w)

    @_timed
    def start_load(self) -> None:
        if self._meta is None:
            return
        t0 = time.perf_counter()
        for op in self._meta.loads:
            keys = op.keys.get(self.hex)
            if self.cache is None or keys is None:   # disabled / scheduler gave up on it
                self._fail_start(op)
                continue
            tail = op.tail_keys.get(self.hex) if op.tail_block_ids else None
            if (op.tail_block_ids and (tail is None or self.tail_cache is None)) or \
                    (not keys and not tail):
                self._fail_start(op)
                continue
            ld = _Load(op, None)
            try:
                # CPU KV: the copies run in wait_for_layer_load, on the model's thread, never
                # beside its compute threads (which stall when a core is taken from them)
                if keys:
                    ld.lf = self.cache.load_chunks(keys, self._kv, op.block_ids,
                                                   background=op.park,
                                                   in_waiter=not self._async_gathers)
                if tail and self.tail_cache is not None:
                    ld.tail = self.tail_cache.load_chunks(tail, self._kv, op.tail_block_ids,
                                                          background=op.park,
                                                          in_waiter=not self._async_gathers)
            except Exception as e:  # noqa: BLE001
                logger.warning("yrcache: load of request %s not started: %s", op.req_id, e)
                for f in ld.futures():
                    f.exception()   # started: let it finish before its blocks are recomputed
                self._fail_start(op)
                continue
            self._time_load(ld)
            if op.park:
                self._parked[op.req_id] = ld
            else:
                self._step_loads.append(ld)
        if self.cfg.mode == "sync" and self._meta.loads:   # the loads completed in here
            self.load_wait_s += time.perf_counter() - t0
        self._meta.loads = []    # started once, even if vLLM called us twice
        self._release_prefetches()

    def wait_for_layer_load(self, layer_name: str) -> None:
        i = self._layers.get(layer_name)
        if i is None or not self._step_loads:
            return
        t0 = time.perf_counter()
        for ld in self._step_loads:
            for f in ld.futures():
                f.wait_layer(i)   # layer i only (copying what arrived); failures are read later
        self.load_wait_s += time.perf_counter() - t0

    @_timed
    def save_layer(self, layer_name: str) -> None:
        i = self._layers.get(layer_name)
        if i is None or not self._writers:
            return
        for op, w in self._writers:
            try:
                w.gather(i)
            except Exception as e:  # noqa: BLE001 - the store is dropped, the step goes on
                logger.warning("yrcache: gather for request %s failed: %s", op.req_id, e)
                w.abort()

    @_timed
    def wait_for_save(self) -> None:
        # Sync loads finish before the step's output: vLLM reads the errors right after.
        loaded = bool(self._step_loads)
        failed = False
        read = 0
        for ld in self._step_loads:
            failed |= self._check_load(ld)
            for f in ld.futures():
                r = f.result() if f.exception() is None else None
                read += r.read_bytes if r is not None else 0
        if read:   # what loading from files cost the model's thread this step
            with self._lock:
                self._report.load_waits.append((self.load_wait_s - self._wait_mark, read))
        self._wait_mark = self.load_wait_s
        self._step_loads = []
        writers, self._writers = self._writers, []
        step = self._meta.step if self._meta is not None else -1
        if loaded:
            with self._lock:
                self._report.loaded_steps.add(step)
        if loaded and self._multi_rank and not failed and writers:
            self._held[step] = writers   # published once the scheduler settles the step
            return
        for op, w in writers:
            # A failed load taints every store of the step: another request may have attended
            # to the failed blocks (a prefix hit on blocks still loading). Failures are rare.
            self._commit(op, w, drop=failed)

    def _commit(self, op: StoreOp, w: StoreWriter, *, drop: bool) -> None:
        keys = op.keys[self.hex]
        if drop:
            w.abort()
            self._note(unpublished=keys)
            return
        try:
            fut = w.commit()
        except Exception as e:  # noqa: BLE001
            logger.warning("yrcache: store of request %s dropped: %s", op.req_id, e)
            self._note(unpublished=keys)
            return
        self._finish_store(op, keys, fut)

    def _prefetch(self, op: PrefetchOp) -> None:
        keys = op.keys.get(self.hex)
        if self.cache is None or not keys:
            return
        try:
            self.cache.prefetch(keys, op.req_id)
        except Exception as e:  # noqa: BLE001 - read-ahead is an optimisation
            logger.warning("yrcache: prefetch for request %s not started: %s", op.req_id, e)
            return
        self._prefetching[op.req_id] = (op.first_chunk, keys)

    def _release_prefetches(self) -> None:
        """Drop read-ahead the scheduler let go (after this step's loads claimed theirs)."""
        rel, self._release = self._release, []
        for rid in rel:
            self._prefetching.pop(rid, None)
            self._prefetch_sent.pop(rid, None)
            if self.cache is not None:
                self.cache.release_prefetch(rid)

    @_timed
    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self._release_prefetches()   # a step without start_load (nothing scheduled) too
        recving, self._parked_failed = self._parked_failed, set()
        for rid, ld in list(self._parked.items()):
            if ld.done():
                self._check_load(ld)
                del self._parked[rid]
                recving.add(rid)
        # A delayed request is released once no gather reads its blocks (at once on CPU, where
        # gathers are synchronous; on CUDA when its copies on the offload stream are done).
        for rid in list(self._sources):
            left = [w for w in self._sources[rid] if w.source_busy()]
            if left:
                self._sources[rid] = left
            else:
                del self._sources[rid]
        sending = {r for r in self._delayed if r not in self._sources}
        self._delayed -= sending
        return sending or None, recving or None

    def load_errors(self) -> set[int]:
        errors, self._errors = self._errors, set()
        return errors

    def worker_meta(self) -> YRCacheWorkerMeta | None:
        with self._lock:
            rep, self._report = self._report, YRCacheWorkerMeta()
        if self.disabled and not self._disabled_reported:
            rep.disabled, self._disabled_reported = self.disabled, True
        self._report_reads(rep)
        if self._async_gathers:   # sent every step: the scheduler keeps the last report's view
            rep.async_gathers = True
            rep.gathering = set(self._sources)
            return rep
        if rep.published or rep.unpublished or rep.load_failed or rep.disabled or \
                rep.loaded_steps or rep.prefetched or rep.rates or rep.load_waits:
            return rep
        return None

    def _report_reads(self, rep: YRCacheWorkerMeta) -> None:
        """Read-ahead progress and the read meter, for the scheduler's planner: sent when they
        changed (the meter at most every RATES_EVERY_S unless a read is stalling)."""
        if self.cache is None:
            return
        for rid, (first, keys) in self._prefetching.items():
            n = first + self.cache.prefetched(keys)
            if self._prefetch_sent.get(rid) != n:
                rep.prefetched[rid] = self._prefetch_sent[rid] = n
        now = time.monotonic()
        rates = self.cache.read_rates()
        key = (rates["read_latency_s"], rates["read_bandwidth_Bps"], rates["read_stall_s"] > 0)
        stalled, was = key[2], bool(self._rates_sent) and self._rates_sent[2]
        since = now - self._rates_at
        if (key != self._rates_sent and since >= RATES_EVERY_S) or (stalled and since >= 0.05) \
                or (was and not stalled):   # a stall is sent as it grows, and when it ends
            rep.rates, self._rates_sent, self._rates_at = rates, key, now

    def stats(self) -> YRCacheStats | None:
        if self.cache is None:
            return None
        st = self.cache.counters()   # every step: not the latency percentiles
        now = {k: int(st.get(k, 0)) for k in _STAT_KEYS}
        if self.tail_cache is not None:
            tc = self.tail_cache.counters()
            now.update({f"tail_{k}": int(tc.get(k, 0)) for k in _TAIL_STAT_KEYS})
        for c in (self.cache, self.tail_cache):   # the stores': faults, by kind and errno
            ss = c.store_.stats() if c is not None else {}
            for k in ("corrupt", "dropped_full"):
                now[k] = now.get(k, 0) + int(ss.get(k, 0))
            for name, n in (ss.get("errors_by_errno") or {}).items():
                now[f"errno_{name}"] = now.get(f"errno_{name}", 0) + int(n)
        delta = {k: v - self._last_stats.get(k, 0) for k, v in now.items()}
        self._last_stats = now
        data: dict[str, Any] = {k: v for k, v in delta.items() if v}
        with self._lock:
            for k, xs in self._samples.items():
                if xs:
                    data[k], self._samples[k] = xs, []
        return YRCacheStats(data=data) if data else None

    def shutdown(self) -> None:
        for held in self._held.values():   # never settled: another rank may have failed
            for op, w in held:
                self._commit(op, w, drop=True)
        self._held.clear()
        for ld in list(self._parked.values()):
            try:
                for f in ld.futures():
                    f.exception(self.cfg.drain_timeout_s)
            except TimeoutError:
                logger.warning("yrcache: a load did not finish at shutdown")
        for c in (self.cache, self.tail_cache):
            if c is not None:
                c.close(timeout=self.cfg.drain_timeout_s)   # publishes in-flight stores
        self.cache = self.tail_cache = None
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    # -- internals --------------------------------------------------------------------------------
    def _check_load(self, ld: _Load) -> bool:
        """Wait for a load; report its failed chunks' blocks. True if any chunk failed."""
        if ld.reported:
            return False
        ld.reported = True
        op = ld.op
        n, nt = len(op.block_ids) // self.per, len(op.tail_block_ids)
        loaded, why = _outcome(ld.lf)
        if loaded < n:
            logger.info("yrcache: request %s: %d of %d chunks loaded (%s); vLLM recomputes the "
                        "rest", op.req_id, loaded, n, why)
            self._fail_all(op, loaded)
            return True
        tail, why = _outcome(ld.tail)
        if tail < nt:
            logger.info("yrcache: request %s: %d of %d tail blocks loaded (%s); vLLM recomputes "
                        "the rest", op.req_id, tail, nt, why)
            self._fail_blocks(op, op.tail_block_ids[tail:], op.first_chunk + n)
            return True
        return False

    def _fail_start(self, op: LoadOp) -> None:
        self._fail_all(op, 0)
        if op.park:   # vLLM waits for it in finished_recving: report it (with its errors)
            self._parked_failed.add(op.req_id)

    def _fail_all(self, op: LoadOp, loaded: int) -> None:
        self._fail_blocks(op, op.block_ids[loaded * self.per:] + op.tail_block_ids,
                          op.first_chunk + loaded)

    def _fail_blocks(self, op: LoadOp, blocks: list[int], chunk: int) -> None:
        """vLLM recomputes ``blocks``; the scheduler learns the first chunk that failed."""
        self._errors.update(b for b in blocks if b >= 0)
        with self._lock:
            self._report.load_failed[op.req_id] = min(chunk, self._report.load_failed.get(
                op.req_id, chunk))

    def _store_tail(self, op: StoreOp, keys: list[bytes]) -> None:
        """A finished request's tail: every layer gathered now (no forward pass writes it), then
        committed like any store; its blocks are released once the gathers are done."""
        if self.tail_cache is None or self.tail_cache.read_only:
            self._note(unpublished=keys)
            return
        w: StoreWriter | None = None
        try:
            w = self.tail_cache.begin_store(keys, self._kv, op.block_ids,
                                            parent=op.parents[self.hex],
                                            first_index=op.first_chunk)
            if w.chunks:
                for i in range(len(self._kv)):
                    w.gather(i)
            fut = w.commit()
        except Exception as e:  # noqa: BLE001 - a store fault is counted, never raised
            logger.warning("yrcache: tail store of request %s dropped: %s", op.req_id, e)
            if w is not None:
                w.abort()
            self._note(unpublished=keys)
            return
        self._finish_store(op, keys, fut)
        if self._async_gathers:
            self._sources.setdefault(op.req_id, []).append(w)

    def _sample(self, name: str, seconds: float) -> None:
        """Under self._lock. Bounded: vLLM collects them every step, but nothing relies on it."""
        xs = self._samples[name]
        xs.append(seconds)
        if len(xs) > _MAX_SAMPLES:
            del xs[:len(xs) - _MAX_SAMPLES]

    def _time_load(self, ld: _Load) -> None:
        """One latency sample per request's load: from its start to its last part done."""
        left = [len(ld.futures())]

        def one(_: Any) -> None:
            with self._lock:
                left[0] -= 1
                if left[0] == 0:
                    self._sample("load_seconds", time.perf_counter() - ld.started)
        for f in ld.futures():
            f.add_done_callback(one)

    def _finish_store(self, op: StoreOp, keys: list[bytes], fut: StoreFuture) -> None:
        t0 = time.perf_counter()

        def done(f: StoreFuture) -> None:
            with self._lock:
                self._sample("store_seconds", time.perf_counter() - t0)
            r = f.result() if f.exception() is None else None
            if r is not None and r.failed == r.dropped == 0 and \
                    r.stored + r.existing == len(keys):
                self._note(published=keys)
            else:
                self._note(unpublished=keys)
        fut.add_done_callback(done)

    def _note(self, *, published: list[bytes] | None = None,
              unpublished: list[bytes] | None = None) -> None:
        with self._lock:
            if published:
                self._report.published.setdefault(self.hex, []).extend(published)
            if unpublished:
                self._report.unpublished.setdefault(self.hex, []).extend(unpublished)
