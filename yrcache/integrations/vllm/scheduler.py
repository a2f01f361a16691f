# SPDX-License-Identifier: Apache-2.0
"""The connector's scheduler side (vLLM's EngineCore process): keys, lookups, and the per-step plan
of loads and stores sent to the workers.

Keys are yrcache's own chain keys over the request's token ids (docs/keys.md), per rank namespace,
with what changes KV without changing token ids (cache_salt, LoRA, multimodal hashes) folded into
the first key. vLLM's block hashes are not used: they are pickle-based, depend on the backend's
block size and may change between vLLM versions.

A request that waits in the queue has its stored chunks read ahead into the workers' memory
(prefetch), minus what vLLM's own prefix cache holds; at admission the planner
(:mod:`.planner`) weighs loading the rest against recomputing it, from measured rates.

Hits end on a block, as vLLM's own prefix cache's do: when a request finishes, the whole blocks
past its last whole chunk are stored too, one block per object in a tail namespace (the chunk
namespace with one-block chunks), chained from that last chunk; a lookup that finds the chunks
then asks for such a tail. A restarted engine, or one on another node, then loads exactly the
blocks the engine that kept the history in memory would have hit, and prefills the rest in the
same split, so its output is the same.

A lookup never stalls a scheduler step for long: it starts when the request arrives, a step waits
for it at most ``lookup_wait_ms``, and otherwise answers "ask again later" (vLLM then skips the
request for this step while the lookup runs on). Chunks this engine planned to store but whose
publication the workers have not confirmed yet are waited for the same way, briefly, so a turn
that arrives right after the previous one still finds its whole history.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from ..._util import prestart
from ...store.keys import chain_keys, fold_extras
from ...store.store import Store
from . import compat
from .config import ConnectorConfig
from .metadata import LoadOp, PrefetchOp, StoreOp, YRCacheMetadata, YRCacheStats, YRCacheWorkerMeta
from .planner import STALLED_S, Planner
from .spaces import Deployment

logger = logging.getLogger("yrcache.vllm")

#: how long a request may wait ("ask again later") for chunks whose store is still in flight
PENDING_WAIT_S = 2.0
#: a planned store not confirmed by the workers within this time no longer counts as pending
PENDING_TTL_S = 30.0
#: a finished lookup is reused by later asks for the same request within this time
LOOKUP_REUSE_S = 2.0
#: a lookup still running after this long counts as a miss (a stuck file system never blocks
#: admission)
LOOKUP_GIVE_UP_S = 2.0
#: a chunk the workers reported published counts as present this long without asking the FS
PUBLISHED_TTL_S = 60.0
_PUBLISHED_MAX = 1 << 18


@dataclass
class _Req:
    request: Any
    extras: dict[str, str] | None          # None: not fingerprintable, neither loaded nor stored
    roots: dict[str, bytes] = field(default_factory=dict)      # ns hex -> chain root
    keys: dict[str, list[bytes]] = field(default_factory=dict)  # ns hex -> chunk keys so far
    stored: int = 0               # leading chunks stored, planned, or known to exist
    lookup: Future[int] | None = None
    lookup_span: tuple[int, int] = (0, 0)
    lookup_done_at: float = 0.0
    lookup_started: float = 0.0
    waited: bool = False          # this request already spent its one blocking wait
    known: int = 0                # leading chunks known to exist (last lookup)
    #: (local tokens, hit tokens, hit chunks, park, tail blocks)
    plan: tuple[int, int, int, bool, int] | None = None
    #: the last lookup's tail: (chunks it follows, blocks found, ns hex -> the tail's keys)
    tail: tuple[int, int, dict[str, list[bytes]]] | None = None
    first_ask: float = 0.0
    last_store_step: int = -1
    parked_inflight: bool = False   # a parked load vLLM waits for (finished_recving) is running
    load_span: tuple[int, int] = (0, 0)   # chunks of its last load
    repair: tuple[int, int] = (0, 0)      # chunks whose load failed: stored over what is there
    prefetch: tuple[int, int] | None = None   # chunks sent to be read ahead while queued
    counted: bool = False         # counted as a lookup hit or miss


class SchedulerSide:
    def __init__(self, vllm_config: Any, cfg: ConnectorConfig, dep: Deployment, *,
                 role: str = "kv_both") -> None:
        self.cfg, self.dep = cfg, dep
        #: vLLM's kv_role: a producer (disaggregated prefill) only stores, a consumer only loads
        self.role = role
        self.loads = role != "kv_producer"
        self.bt, self.chunk = dep.block_tokens, dep.chunk_tokens
        self.per = self.chunk // self.bt
        self.nss = dep.unique
        self.disabled = ""
        # Lookups only: the workers' stores run the janitor and hold the capacity budget.
        self.stores: dict[str, Store] = {}
        #: namespace hex -> the store of its tail namespace (block-sized objects)
        self.tail_stores: dict[str, Store] = {}
        try:
            for ns in self.nss:
                self.stores[ns.hex] = Store(cfg.root, ns, janitor_period=0)
            for h, tns in dep.tails.items():
                if h in self.stores:
                    self.tail_stores[h] = Store(cfg.root, tns, janitor_period=0)
        except (OSError, ValueError) as e:
            self.disabled = f"cache root {cfg.root!r} is unusable: {e}"
            self._close_stores()
        #: a root this process can read but not write: loads only, no store is planned
        self.load_only = any(s.read_only for s in self.stores.values())
        if self.load_only and role == "kv_producer":   # a producer that can store nothing
            self.disabled = f"cache root {cfg.root!r} is not writable and kv_role is kv_producer"
            self._close_stores()
        if self.disabled:
            if cfg.on_bad_root == "fail":   # a configuration error: said once, before serving
                raise ValueError(f"yrcache connector: {self.disabled} (on_bad_root='serve' "
                                 f"serves without the cache instead)")
            logger.error("yrcache: connector DISABLED: %s", self.disabled)   # vLLM serves on
        if role in ("kv_producer", "kv_consumer") and not self.disabled:
            logger.info("yrcache: kv_role %s: %s", role, "stores only, never looks up or loads"
                        if role == "kv_producer" else "loads only, never stores")
        if role == "kv_consumer":
            self.load_only = True
        elif self.load_only:
            logger.warning("yrcache: cache root %s is load-only here (not writable): prefixes "
                           "stored by others are loaded, nothing is stored", cfg.root)
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="yrcache-lookup")
        if not self.disabled and not self.load_only and cfg.mode == "async":
            self._log_shutdown_budget(getattr(vllm_config, "shutdown_timeout", None))
        if not self.disabled:
            prestart(self._pool)   # the first request does not pay for thread starts
            for s in (*self.stores.values(), *self.tail_stores.values()):
                s.warm_up()
        self._reqs: dict[str, _Req] = {}
        self._kvm: Any = None
        self._step = 0
        self._step_loads: list[LoadOp] = []
        self._delayed_new: list[str] = []
        self._published: OrderedDict[bytes, float] = OrderedDict()   # key -> when reported
        self._settled: dict[int, bool] = {}
        self._pending: dict[bytes, float] = {}      # key -> deadline
        self._gathering: set[str] = set()
        # Gathers that finish after the step (CUDA copy streams): known from the device at start,
        # not from a worker's report, which arrives a step late (the first step would miss it)
        self._async_gathers = compat.device_type() != "cpu"
        self._lock = threading.Lock()
        self._stats: dict[str, int] = {}
        self._lookup_seen = (0, 0)   # (round trips, existence checks) counted in _stats
        self.totals: dict[str, int] = {}   # the same counters since start (tests, benchmarks)
        chunk_bytes = max((s.layout.segment_bytes(self.chunk) * s.layout.num_layers
                           for s in dep.spaces), default=0)
        self.planner = Planner(self.chunk, chunk_bytes, cfg.min_load_tokens)
        self._planned_bytes = 0                     # loads planned in this step so far
        self._queued: dict[str, _Req] = {}          # arrived, not admitted: prefetch candidates
        self._released: list[str] = []              # read-ahead the workers may drop
        self._prefetched: dict[str, int] = {}       # request -> leading chunks ready in memory
        self._tail_stores: list[StoreOp] = []       # finished requests' tails, for the next step

    # -- vLLM hooks -------------------------------------------------------------------------------
    def bind_kv_cache_manager(self, kvm: Any) -> None:
        self._kvm = kvm

    def on_new_request(self, request: Any) -> None:
        st = self._track(request)
        if st.extras is not None and not self.disabled and self.loads:
            self._queued[request.request_id] = st
            limit, n = self._max_chunks(request)
            if limit:
                self._start_lookup(st, self._known(st, n), n, limit)

    def get_num_new_matched_tokens(self, request: Any,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        st = self._reqs.get(request.request_id) or self._track(request)
        if st.extras is None or self.disabled or not self.loads or \
                not self._fingerprint_holds(st):
            return 0, False
        limit, n = self._max_chunks(request)
        if limit <= num_computed_tokens or (n == 0 and not self.tail_stores):
            return 0, False
        now = time.monotonic()
        if not st.first_ask:
            st.first_ask = now
        hit = self._known(st, n)
        if hit < n or self._tail_room(hit, limit):
            if hit < n and now - st.first_ask < PENDING_WAIT_S and any(
                    k in self._pending for keys in st.keys.values() for k in keys[hit:hit + 1]):
                self._bump("lookup_waits_store")
                return None, False      # its store is in flight: ask again next step
            span = (hit, n)
            if st.lookup is None or st.lookup_span != span or (
                    st.lookup.done() and now - st.lookup_done_at > LOOKUP_REUSE_S):
                self._start_lookup(st, hit, n, limit)
            assert st.lookup is not None
            # One blocking wait per request; later asks only look (a queue of waiting requests
            # must not add up to a stalled step); a lookup that takes too long is a miss.
            wait = 0.0 if st.waited else self.cfg.lookup_wait_ms / 1e3
            st.waited = True
            try:
                got = st.lookup.result(timeout=wait)
            except FutureTimeout:
                if now - st.lookup_started < LOOKUP_GIVE_UP_S:
                    self._bump("lookup_deferred")
                    return None, False  # a slow file system: vLLM asks again next step
                self._bump("lookup_gave_up")
                got = 0
            except Exception as e:  # noqa: BLE001 - a cache fault is a miss
                self._bump("lookup_errors")
                logger.warning("yrcache: lookup failed (%s); treating as a miss", e)
                got = 0
            hit += got
        st.known = hit
        tail = st.tail[1] if st.tail is not None and st.tail[0] == hit and \
            self._tail_room(hit, limit) else 0
        hit_tokens = min(hit * self.chunk, limit) + tail * self.bt
        if not st.counted:   # /metrics: once per request, past what vLLM's own cache holds
            st.counted = True
            self._bump("requests_hit" if hit_tokens > num_computed_tokens else "requests_miss")
        if hit_tokens <= num_computed_tokens:
            st.plan = None
            return 0, False
        d = self.planner.decide(num_computed_tokens, hit_tokens,
                                self._prefetched.get(request.request_id, 0), self._planned_bytes)
        choice = d.choice if d.choice != "static" else \
            ("load" if d.tokens > num_computed_tokens else "recompute")
        self._bump(f"decision_{choice}")
        logger.debug("yrcache: request %s: %d tokens held, %d stored, %d ready in memory; %s; "
                     "loading %d (%s)", request.request_id, num_computed_tokens, hit_tokens,
                     self._prefetched.get(request.request_id, 0) * self.chunk, d.log_fields(),
                     d.tokens - num_computed_tokens, self.planner.snapshot())
        hit_tokens = d.tokens
        ext = hit_tokens - num_computed_tokens
        if ext <= 0:
            st.plan = None
            return 0, False
        park = self.cfg.park_load_tokens > 0 and ext >= self.cfg.park_load_tokens
        st.plan = (num_computed_tokens, hit_tokens, hit, park, tail)
        return ext, park

    def update_state_after_alloc(self, request: Any, blocks: Any,
                                 num_external_tokens: int) -> None:
        st = self._reqs.get(request.request_id)
        if st is None:
            return
        self._queued.pop(request.request_id, None)
        if st.prefetch is not None:   # the workers drop it once this step's loads claimed it
            self._released.append(request.request_id)
            st.prefetch = None
        plan, st.plan = st.plan, None
        st.stored = max(st.stored, st.known)   # chunks known to exist are never stored again
        if num_external_tokens == 0:
            return
        ids = compat.request_block_ids(blocks)
        if plan is None:   # vLLM counts tokens we did not plan (cannot happen in 0.32): make sure
            plan = (0, 0, 0, False, 0)   # they are recomputed (from 0: we lost the local count)
        local, hit_tokens, hit, park, tail = plan
        ok = local + num_external_tokens == hit_tokens and len(ids) >= hit_tokens // self.bt
        if not ok:
            logger.warning("yrcache: request %s: vLLM allocated %d external tokens after %d "
                           "local ones with %d blocks, the plan was %d in all; reporting them "
                           "as failed so vLLM recomputes them", request.request_id,
                           num_external_tokens, local, len(ids), hit_tokens)
            hit_tokens = local + num_external_tokens   # what vLLM now counts as loaded
        lo, hi = local // self.bt, hit_tokens // self.bt
        # chunks, then the tail's blocks from block t0 (when the hit goes past the chunks found)
        t0 = hit * self.per if tail and hit_tokens > hit * self.chunk else hi
        c1 = -(-min(hit_tokens, t0 * self.bt) // self.chunk)
        c0 = min(local // self.chunk, c1)
        bids = [ids[b] if lo <= b < hi and b < len(ids) else -1
                for b in range(c0 * self.per, c1 * self.per)]
        tb = range(max(lo, t0), hi)
        # An empty key map makes every worker report these blocks as failed.
        keys = {h: k[c0:c1] for h, k in st.keys.items()} if ok else {}
        tail_keys: dict[str, list[bytes]] = {}
        if ok and tb and st.tail is not None:
            tail_keys = {h: k[tb.start - t0:tb.stop - t0] for h, k in st.tail[2].items()}
        self._step_loads.append(LoadOp(request.request_id, keys, c0, bids, park, tail_keys,
                                       [ids[b] if b < len(ids) else -1 for b in tb]))
        self._planned_bytes += (c1 - c0) * self.planner.chunk_bytes
        st.parked_inflight, st.load_span = park, (c0, c1)
        if ok:
            st.stored = max(st.stored, hit)
        st.lookup = None
        self._bump("load_requests", load_tokens=num_external_tokens,
                   load_parked=int(park), local_hit_tokens=local, load_tail_blocks=len(tb))

    def build_connector_meta(self, so: Any) -> YRCacheMetadata:
        meta = YRCacheMetadata(loads=self._step_loads, stores=self._tail_stores,
                               delayed=self._delayed_new,
                               preempted=sorted(getattr(so, "preempted_req_ids", None) or ()),
                               step=self._step, settled=self._settled, released=self._released)
        self.planner.step_built(int(getattr(so, "total_num_scheduled_tokens", 0) or 0),
                                bool(meta.loads))
        self._step_loads, self._delayed_new, self._settled, self._released = [], [], {}, []
        self._tail_stores = []
        self._planned_bytes = 0
        self._step += 1
        if self.disabled:
            return meta
        for rid in meta.preempted:   # back in the queue: read ahead again
            st = self._reqs.get(rid)
            if st is not None and st.extras is not None:
                self._queued[rid] = st
                st.prefetch, st.lookup = None, None
                self._prefetched.pop(rid, None)
                meta.released.append(rid)
        if self.cfg.prefetch_bytes:
            try:
                self._plan_prefetches(meta)
            except Exception:  # noqa: BLE001 - read-ahead is an optimisation
                logger.exception("yrcache: planning this step's prefetches failed")
        try:   # planned loads must reach the workers whatever happens to store planning
            for nr in so.scheduled_new_reqs:
                self._plan_store(nr.req_id, nr.num_computed_tokens,
                                 so.num_scheduled_tokens.get(nr.req_id, 0), meta)
            cr = so.scheduled_cached_reqs
            for i, rid in enumerate(cr.req_ids):
                self._plan_store(rid, cr.num_computed_tokens[i],
                                 so.num_scheduled_tokens.get(rid, 0), meta)
        except Exception:  # noqa: BLE001
            logger.exception("yrcache: planning this step's stores failed; none are stored")
            meta.stores = [op for op in meta.stores if op.tail]
        return meta

    def update_connector_output(self, out: Any) -> None:
        wm = getattr(out, "kv_connector_worker_meta", None)
        now = time.monotonic()
        self.planner.step_done()
        for rid in getattr(out, "finished_recving", None) or ():
            st = self._reqs.get(rid)
            if st is not None:
                st.parked_inflight = False
        if isinstance(wm, YRCacheWorkerMeta):
            for keys in wm.published.values():
                for k in keys:
                    self._pending.pop(k, None)
                    self._published[k] = now
                    self._published.move_to_end(k)
            while len(self._published) > _PUBLISHED_MAX:
                self._published.popitem(last=False)
            for keys in wm.unpublished.values():
                for k in keys:
                    self._pending.pop(k, None)
                    self._published.pop(k, None)
            for rid, c in wm.load_failed.items():
                st = self._reqs.get(rid)
                if st is not None:   # recomputed chunks are stored again, over what is there
                    st.stored = min(st.stored, c)
                    lo, hi = st.repair if st.repair[1] > st.repair[0] else (c, c)
                    st.repair = (min(lo, c), max(hi, c + 1, st.load_span[1]))
                    for h in st.keys:
                        for k in st.keys[h][c:]:
                            self._published.pop(k, None)
                self._bump("load_failures")
            for step in wm.loaded_steps:   # held stores of that step: publish or drop
                self._settled[step] = not wm.load_failed
            self._gathering = set(wm.gathering)
            for rid, n in wm.prefetched.items():
                if rid in self._queued:
                    self._prefetched[rid] = n
            if wm.rates:
                self.planner.reads(wm.rates)
            for seconds, nbytes in wm.load_waits:
                self.planner.load_waited(seconds, nbytes)
            self._async_gathers = self._async_gathers or wm.async_gathers
            if wm.disabled and not self.disabled:
                self.disabled = wm.disabled
                logger.error("yrcache: a worker disabled the connector (%s); no more loads or "
                             "stores", wm.disabled)
        if self._pending and now > min(self._pending.values()):
            self._pending = {k: d for k, d in self._pending.items() if d > now}

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict | None]:
        rid = request.request_id
        st = self._reqs.pop(rid, None)
        self._queued.pop(rid, None)
        self._prefetched.pop(rid, None)
        if st is not None and st.prefetch is not None:   # aborted while queued
            self._released.append(rid)
        # Keep the blocks while a worker may still be reading them: gathers that complete after
        # the step's output (GPU copy streams). On CPU every gather is done within its step.
        # With asynchronous gathers every request that had a store planned is delayed: the worker
        # releases it in the next get_finished once none of its gathers is running (at once if
        # none is), so a late report or async scheduling's step skew cannot free blocks early.
        # A request aborted while its parked load runs is held by vLLM itself until the load
        # reports (finished_recving); delaying it too would free its blocks twice.
        if st is not None and st.parked_inflight:
            return False, None
        tail = False
        if st is not None and self.cfg.store_tails and self.tail_stores:
            try:
                tail = self._plan_tail(st, block_ids)
            except Exception:  # noqa: BLE001 - a tail is an optimisation
                logger.exception("yrcache: planning the tail store of request %s failed", rid)
        # A tail's blocks are kept until a worker has gathered them (the next step).
        delay = tail or rid in self._gathering or (
            self._async_gathers and st is not None and st.last_store_step >= 0)
        if delay:
            self._delayed_new.append(rid)
        return delay, None

    def reset_cache(self) -> bool:
        self._published.clear()
        self._pending.clear()
        for st in self._reqs.values():
            st.lookup = None
        return True

    def stats(self) -> YRCacheStats | None:
        self._count_lookup_work()
        with self._lock:
            data, self._stats = self._stats, {}
        return YRCacheStats(data=data) if data else None

    def _count_lookup_work(self) -> None:
        """The lookup stores' round trips and existence checks since the last call: what this
        scheduler cost the file system's metadata server."""
        rounds = checks = 0
        for store in (*self.stores.values(), *self.tail_stores.values()):
            c = store.stats()
            rounds, checks = rounds + c["lookup_rounds"], checks + c["lookup_stats"]
        seen_rounds, seen_checks = self._lookup_seen
        if rounds > seen_rounds or checks > seen_checks:
            self._lookup_seen = (rounds, checks)
            self._bump("lookup_round_trips", rounds - seen_rounds,
                       lookup_existence_checks=checks - seen_checks)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._close_stores()

    def _log_shutdown_budget(self, server_timeout: float | None) -> None:
        """Say at start-up when vLLM's shutdown would cut the drain of stores in flight short."""
        if server_timeout == 0:
            logger.info("yrcache: vLLM's shutdown timeout is 0 (--shutdown-timeout, vLLM's "
                        "default): a server stopped with SIGTERM ends its engine at once, and "
                        "stores still being written are lost (later misses, never wrong KV); "
                        "start it with --shutdown-timeout 30 to let them drain")
            return
        worker = compat.worker_shutdown_timeout() if server_timeout else None
        if worker is not None and worker < self.cfg.drain_timeout_s:
            logger.info("yrcache: vLLM gives a worker process %g s to exit at shutdown "
                        "(VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS), then kills it: stores still "
                        "being written after that are lost (later misses, never wrong KV); set it "
                        "to %g (drain_timeout_s) to let them drain", worker,
                        self.cfg.drain_timeout_s)

    def _close_stores(self) -> None:
        for s in (*self.stores.values(), *self.tail_stores.values()):
            s.close()
        self.stores.clear()
        self.tail_stores.clear()

    # -- internals --------------------------------------------------------------------------------
    def _track(self, request: Any) -> _Req:
        extras, why = compat.request_fingerprint(request)
        st = _Req(request, extras)
        if extras is None:
            self._bump("requests_unfingerprintable")
            logger.info("yrcache: request %s is neither loaded nor stored (%s)",
                        request.request_id, why)
        else:
            st.roots = {ns.hex: fold_extras(ns.digest, extras or None) for ns in self.nss}
            st.keys = {h: [] for h in st.roots}
        self._reqs[request.request_id] = st
        return st

    def _fingerprint_holds(self, st: _Req) -> bool:
        """A streaming-input session may add multimodal items to a live request: its keys were
        folded from the old fingerprint, so such a request is neither loaded nor stored again."""
        if not getattr(st.request, "mm_features", None):
            return True
        if compat.request_fingerprint(st.request)[0] == st.extras:
            return True
        st.extras = None
        self._bump("requests_fingerprint_changed")
        logger.info("yrcache: request %s changed its multimodal inputs; no longer cached",
                    st.request.request_id)
        return False

    def _max_chunks(self, request: Any) -> tuple[int, int]:
        """(tokens a hit may cover, chunks that covers): vLLM must compute at least one token,
        and hits are block-aligned; the last chunk may be loaded in part."""
        n_tok = int(request.num_tokens)
        limit = (n_tok - 1) // self.bt * self.bt
        return limit, min(-(-limit // self.chunk), n_tok // self.chunk)

    def _keys_upto(self, st: _Req, n: int) -> None:
        have = min(len(k) for k in st.keys.values()) if st.keys else n
        if have >= n:
            return
        tokens = list(st.request.all_token_ids[have * self.chunk:n * self.chunk])
        for h, keys in st.keys.items():
            if len(keys) >= n:
                continue
            k0 = len(keys)
            keys.extend(chain_keys(keys[-1] if k0 else st.roots[h],
                                   tokens[(k0 - have) * self.chunk:], self.chunk))

    def _known(self, st: _Req, n: int) -> int:
        """Leading chunks (of the first n) the workers reported published, for every rank."""
        self._keys_upto(st, n)
        hit, old = 0, time.monotonic() - PUBLISHED_TTL_S
        while hit < n and all(self._published.get(keys[hit], 0.0) > old
                              for keys in st.keys.values()):
            hit += 1
        return hit

    def _tail_room(self, hit: int, limit: int) -> int:
        """Blocks a tail after ``hit`` chunks may add to a hit that ends at ``limit`` tokens."""
        if not self.tail_stores or hit * self.chunk >= limit:
            return 0
        return min(self.per - 1, (limit - hit * self.chunk) // self.bt)

    def _tail_keys(self, st: _Req, hit: int, blocks: int) -> dict[str, list[bytes]]:
        """Keys of the tail of ``blocks`` blocks after chunk ``hit`` (chained from its key)."""
        a = hit * self.chunk
        tokens = list(st.request.all_token_ids[a:a + blocks * self.bt])
        return {h: chain_keys(keys[hit - 1] if hit else st.roots[h], tokens, self.bt)
                for h, keys in st.keys.items()}

    def _start_lookup(self, st: _Req, a: int, b: int, limit: int) -> None:
        if a >= b and not self._tail_room(a, limit):
            return
        self._keys_upto(st, b)
        work = [(self.stores[h], keys[a:b]) for h, keys in st.keys.items()] if a < b else []

        def run() -> int:
            try:
                got = min(store.lookup(ks) for store, ks in work) if work else 0
                room = self._tail_room(a + got, limit)
                if room:   # where the chunks end, a tail may go on (in blocks)
                    tk = self._tail_keys(st, a + got, room)
                    n = min(self.tail_stores[h].lookup(ks) for h, ks in tk.items())
                    st.tail = (a + got, n, {h: ks[:n] for h, ks in tk.items()})
                    self._bump("tail_lookups", tail_blocks_found=n)
                return got
            finally:
                st.lookup_done_at = time.monotonic()

        st.lookup, st.lookup_span = self._pool.submit(run), (a, b)
        st.lookup_started = time.monotonic()
        self._bump("lookups")

    def _plan_prefetches(self, meta: YRCacheMetadata) -> None:
        """Queued requests whose lookup found chunks beyond what vLLM's own prefix cache holds:
        the workers read those chunks into memory while the request waits."""
        for rid, st in self._queued.items():
            if st.prefetch is not None or st.extras is None:
                continue
            n = self._max_chunks(st.request)[1]
            hit = self._known(st, n) if n else 0
            if hit < n:   # the rest is on the file system: ask it (in the background)
                if st.lookup is None:
                    self._start_lookup(st, hit, n, self._max_chunks(st.request)[0])
                    continue
                if not st.lookup.done() or st.lookup.exception() is not None:
                    continue
                hit = max(hit, st.lookup_span[0] + st.lookup.result())
            local = compat.local_hit_tokens(self._kvm, st.request) if self._kvm else 0
            c0 = local // self.chunk
            st.prefetch = (c0, max(c0, hit))   # considered once
            # Reading ahead hides the reads behind the queue wait, so a slow root is read ahead
            # too (the decision at admission weighs what is ready); not a stalled one, nor a hit
            # the static rule would recompute.
            ext = min(hit * self.chunk, self._max_chunks(st.request)[0]) - local
            static = self.cfg.min_load_tokens
            if hit <= c0 or self.planner.read_stall_s >= STALLED_S or 0 < ext < static:
                continue
            self._keys_upto(st, hit)
            meta.prefetches.append(PrefetchOp(rid, {h: k[c0:hit] for h, k in st.keys.items()},
                                              c0))
            self._bump("prefetch_requests", prefetch_chunks_planned=hit - c0)

    def _plan_tail(self, st: _Req, block_ids: Any) -> bool:
        """A finished request's whole blocks past its last whole chunk: stored (next step), one
        block per object, so a later hit ends where vLLM's own prefix cache would end it."""
        if st.extras is None or self.load_only or self.disabled or \
                not self._fingerprint_holds(st):
            return False
        blocks = int(st.request.num_computed_tokens) // self.bt   # the last token has no KV
        full = blocks // self.per
        if blocks == full * self.per or st.stored != full:   # none, or the chain has a gap
            return False
        if st.tail is not None and st.tail[0] == full and st.tail[1] >= blocks - full * self.per:
            return False   # it loaded that tail and computed no whole block past it
        ids = list(block_ids or ())
        if len(ids) < blocks:
            return False
        self._keys_upto(st, full)
        keys = self._tail_keys(st, full, blocks - full * self.per)
        parents = {h: (k[full - 1] if full else st.roots[h]) for h, k in st.keys.items()}
        self._tail_stores.append(StoreOp(st.request.request_id, keys, parents, full * self.per,
                                         [int(b) for b in ids[full * self.per:blocks]],
                                         tail=True))
        self._bump("tail_stores_planned", tail_blocks_planned=blocks - full * self.per)
        return True

    def _plan_store(self, rid: str, computed: int, scheduled: int, meta: YRCacheMetadata) -> None:
        st = self._reqs.get(rid)
        if st is None or st.extras is None or scheduled <= 0 or self.load_only or \
                not self._fingerprint_holds(st):
            return
        full = min(computed + scheduled, int(st.request.num_tokens)) // self.chunk
        a = st.stored
        if full <= a:
            return
        if self._kvm is None:
            return
        blocks = compat.manager_block_ids(self._kvm, rid)
        if len(blocks) < full * self.per:
            logger.warning("yrcache: request %s holds %d blocks, %d needed to store; skipped",
                           rid, len(blocks), full * self.per)
            return
        self._keys_upto(st, full)
        op = StoreOp(rid, {h: k[a:full] for h, k in st.keys.items()},
                     {h: (k[a - 1] if a else st.roots[h]) for h, k in st.keys.items()}, a,
                     blocks[a * self.per:full * self.per],
                     (max(a, st.repair[0]), min(full, st.repair[1])))
        deadline = time.monotonic() + PENDING_TTL_S
        for keys in op.keys.values():
            for k in keys:
                if k not in self._published:
                    self._pending[k] = deadline
        st.stored, st.last_store_step = full, self._step
        if full >= st.repair[1]:
            st.repair = (0, 0)   # every chunk to repair is in a planned store now
        meta.stores.append(op)
        self._bump("store_chunks_planned", full - a)

    def _bump(self, name: str, n: int = 1, **more: int) -> None:
        with self._lock:
            for d in (self._stats, self.totals):
                d[name] = d.get(name, 0) + n
                for k, v in more.items():
                    d[k] = d.get(k, 0) + v

