# SPDX-License-Identifier: Apache-2.0
"""A Cache's load pipeline: reads go out layer-major, layer 0 of every chunk alone, then a window
of AHEAD_LAYERS layers (at most as many reads as there are load slabs); each verified segment is
scattered as it arrives, and layer futures complete in order as soon as every chunk's segment of
that layer is in place.
Chunks in the host tier or staged by a store of this process are copied from memory.

A load into host memory that the caller waits on layer by layer can leave the copying to the
waiter (``in_waiter``): segments that arrive are queued, and :meth:`LoadFuture.wait_layer` (or
``result()``) copies them in the waiting thread. On a CPU engine the model's threads and the copies
then never run at once (a copy thread steals a core from the model's OpenMP team, which stalls the
whole team at its next barrier), while the reads still go on under the forward pass."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._util import prestart
from ..futures import Future
from .parts import CacheParts
from .staging import sync_all
from .transfer import GpuOrder, unsignalled

logger = logging.getLogger(__name__)

#: Layer 0's reads go out alone, then a window of this many layers: layer l's reads go out once
#: every read of layer l - AHEAD_LAYERS returned. Reads of later layers taken at once compete with
#: the first layer's (a fresh object's open and header on top of its read) for the file system's
#: threads and the CPU, and layer 0 is what the forward pass waits on first. Measured on MooseFS
#: (11 objects x 8 layers, written on one mount, loaded from the other): layer 0 in place after
#: 33-40 ms with every read issued at once, 25-30 ms with the window; all layers in 55-58 ms
#: either way. Two layers in flight keep the file system busy while the model computes one.
AHEAD_LAYERS = 2


@dataclass(frozen=True)
class LoadResult:
    tokens: int      # leading tokens whose KV is in place in every layer
    chunks: int      # chunks asked for
    loaded: int      # leading chunks loaded (tokens = loaded * chunk_tokens)
    reason: str = ""  # why a chunk failed ("missing", "corrupt: ...", "error: ...")
    read_bytes: int = 0   # bytes read from files (the rest came from memory)


class LoadFuture(Future[LoadResult]):
    """A load's outcome, with one future per layer (``layer(i)``), completed as soon as that
    layer's segments of every chunk are in place (or known missing)."""

    __slots__ = ("_layers", "_pump")

    def __init__(self, num_layers: int) -> None:
        super().__init__(what="cache.load")
        self._layers: list[Future[None]] = [Future(what=f"cache.load.layer{i}")
                                            for i in range(num_layers)]
        #: copies segments that arrived, in the calling thread (loads with ``in_waiter``)
        self._pump: Callable[[Future[Any], float], None] | None = None

    def wait_layer(self, i: int, timeout: float | None = None) -> BaseException | None:
        """Wait until layer ``i`` is in place (doing the copies queued for the waiter, if any);
        its exception, or None."""
        self._pump_until(self._layers[i], timeout)
        return self._layers[i].exception(timeout)

    def _wait(self, timeout: object) -> None:
        self._pump_until(self, timeout)
        super()._wait(timeout)

    def _pump_until(self, f: Future[Any], timeout: object) -> None:
        pump = self._pump
        if pump is None:
            return
        deadline = None if timeout is None else time.monotonic() + float(timeout)  # type: ignore[arg-type]
        while not f.done():
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                break
            pump(f, left)

    def layer(self, i: int) -> Future[None]:
        return self._layers[i]

    def layers(self) -> list[Future[None]]:
        """Every layer's future, in layer order."""
        return list(self._layers)


def fail_load(lf: LoadFuture, e: BaseException) -> None:
    """Fail every layer of ``lf`` not done yet, and the load."""
    for f in [*lf.layers(), lf]:
        if not f.done():
            f.set_exception(e)


class Loader:
    """Runs loads on two threads, and parked (background) loads on a third so that loads a
    forward pass waits on never queue behind them."""

    def __init__(self, parts: CacheParts, stride: int) -> None:
        self.parts, self.stride = parts, stride
        self.lengths = [parts.seg_bytes] * parts.layout.num_layers
        self.abandoned = False   # close() gave up waiting: loads stop issuing reads
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="yrcache-cache-load")
        self._background = ThreadPoolExecutor(1, thread_name_prefix="yrcache-cache-bgload")

    def submit(self, lf: LoadFuture, keys: list[bytes], kv: Sequence[Any], ids: Any, batch: int,
               gpu: GpuOrder | None, background: bool, in_waiter: bool = False) -> None:
        """Start a load; RuntimeError if the loader was shut down. Chunks read ahead (prefetch)
        are claimed now, in the caller's thread, before the caller lets their owner go."""
        run = _LoadRun(self, lf, keys, kv, ids, batch, gpu, self.parts.prefetch.claim(keys),
                       self._background if background else self._pool)
        if in_waiter and gpu is None:
            run.queue = deque()
            lf._pump = run.pump
        try:
            run.pool.submit(self._run_guarded, run)
        except BaseException:
            self.parts.prefetch.unclaim(keys, run.claimed)
            raise

    def prestart(self) -> None:
        prestart(self._pool)
        prestart(self._background)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False)
        self._background.shutdown(wait=False)

    @staticmethod
    def _run_guarded(run: _LoadRun) -> None:
        try:
            run.run()
        except BaseException as e:
            run.failed(e)

    def scatter(self, layer: Any, ids: Any, c: int, seg: memoryview, batch: int,
                gpu: GpuOrder | None) -> tuple[bool, str, list[Any]]:
        """Scatter one segment; on CUDA the copy is enqueued (its events are returned: the source
        must stay untouched until they complete)."""
        mine = None if gpu is None else GpuOrder(None, gpu.after_event, gpu.signal, None)
        try:
            self.parts.metrics.bump(
                bytes_scattered=self.parts.copier.copy(False, layer, ids, c, seg, batch, mine))
        except Exception as e:  # noqa: BLE001 - this chunk fails; the load goes on
            sync_all(mine.events if mine else [])
            return False, f"error: {e}", []
        return True, "", mine.events if mine else []


class _LoadRun:
    """One load: which chunks are in place, layer by layer, and which come from where."""

    def __init__(self, loader: Loader, lf: LoadFuture, keys: list[bytes], kv: Sequence[Any],
                 ids: Any, batch: int, gpu: GpuOrder | None,
                 claimed: list[np.ndarray | None], pool: ThreadPoolExecutor) -> None:
        self.loader, self.lf, self.keys, self.kv = loader, lf, keys, kv
        self.claimed = claimed   # chunks read ahead, in memory: no file read
        self.unclaimed = False   # they were let go (after the last layer's copies)
        self.ids, self.batch, self.gpu = ids, batch, gpu
        self.n, self.nl = len(keys), loader.parts.layout.num_layers
        self.lock = threading.Lock()
        self.first_bad, self.reason = self.n, ""   # chunks from here on are not (all) in place
        self.left = [self.n] * self.nl              # segments of each layer still outstanding
        self.next_layer = 0                         # layer futures are completed in order
        self.filling: list[np.ndarray | None] = []
        self.filled = [0] * self.n
        self.arrived = threading.Condition(self.lock)
        self.queue: deque[tuple[Any, ...]] | None = None   # segments for the waiter to copy
        self.unread = [self.n] * self.nl            # segments of each layer not yet read
        self.next_issue = 0                         # the next layer whose reads go out
        self.issuing = True                         # a thread is issuing reads (run() first)
        self.pool = pool                            # where issuing goes on when a window opens

    def pump(self, f: Future[Any], timeout: float) -> None:
        """Copy the segments that arrived, in this thread; if none did, wait up to ``timeout``
        for one, or for ``f`` to complete."""
        assert self.queue is not None
        with self.arrived:
            if not self.queue and not f.done():
                self.arrived.wait(timeout)
            items = list(self.queue)
            self.queue.clear()
        for it in items:
            self._on_segment(*it, queued=True)

    def run(self) -> None:
        p, n, nl = self.loader.parts, self.n, self.nl
        t0 = time.perf_counter()
        self.tiered = [c if c is not None else p.tier.get(k)
                       for k, c in zip(self.keys, self.claimed)]
        self.file_bytes = 0
        # Copies for the host tier of chunks not in it: at most what the tier can hold, and a
        # copy enters the tier only when every layer of it was filled from verified bytes.
        room = p.tier.capacity
        for c in range(n):
            want = self.tiered[c] is None and room > 0
            room -= want
            self.filling.append(p.tier.slot() if want else None)
        self.t0 = t0
        if n == 0:
            for l in range(nl):
                self.lf.layer(l).set_result(None)
            self._complete()
        self._issue_ready()

    def _issuable(self) -> bool:
        """Whether layer ``next_issue``'s reads may go out now (see AHEAD_LAYERS); under lock."""
        l = self.next_issue   # layer l - AHEAD_LAYERS >= 1 went out only once layer 0 was read
        return l < self.nl and (l == 0 or not self.unread[max(0, l - AHEAD_LAYERS)])

    def _issue_ready(self) -> None:
        """Issue the layers the window allows. The thread that finds none left stops issuing;
        the read whose return opens the window again starts an issuer on the load's pool, so no
        thread sits waiting on a load's reads (a pool thread blocked per load would queue a
        step's other loads behind it)."""
        try:
            while True:
                with self.lock:
                    if not self._issuable():
                        self.issuing = False
                        return
                    l = self.next_issue
                    self.next_issue += 1
                for c in range(self.n):
                    self._issue(l, c)
                if l == self.nl - 1:   # every copy from a read-ahead chunk is done
                    self._unclaim()
        except BaseException as e:
            self.failed(e)

    def failed(self, e: BaseException) -> None:
        """A bug: surface it on the futures, never hang the caller."""
        logger.exception("yrcache: load failed")
        self._unclaim()
        fail_load(self.lf, e)

    def _unclaim(self) -> None:
        """Let the read-ahead chunks this load copies from go (once)."""
        with self.lock:
            done, self.unclaimed = self.unclaimed, True
        if not done:
            self.loader.parts.prefetch.unclaim(self.keys, self.claimed)

    def _complete(self) -> None:
        """Every segment is in place or failed: the host tier, the meters, the result."""
        p, n, nl = self.loader.parts, self.n, self.nl
        loaded = self.first_bad
        if loaded < n:
            p.metrics.bump(load_partial=1)
        for c in range(loaded):
            slot = self.filling[c]
            if slot is not None and self.filled[c] == nl:
                p.tier.insert(self.keys[c], slot)
        p.metrics.bump(load_tier_hits=sum(t is not None and cl is None for t, cl in
                                          zip(self.tiered[:loaded], self.claimed)))
        secs = time.perf_counter() - self.t0
        p.metrics.record("load", secs, loaded * p.seg_bytes * nl)
        p.meter.transfer(secs, self.file_bytes)
        self.lf.set_result(LoadResult(loaded * p.chunk_tokens, n, loaded, self.reason,
                                      self.file_bytes))

    def _issue(self, l: int, c: int) -> None:
        """Layer ``l`` of chunk ``c``: from the host tier, a store's staging, or a file read."""
        ld, p, gpu = self.loader, self.loader.parts, self.gpu
        if ld.abandoned or c > self.first_bad:  # beyond the first failure: skip
            self._returned(l)
            self.finish(l, c, False, self.reason or "skipped", None)
            return
        hot = self.tiered[c]
        if hot is not None:  # in the host tier: no file read
            self._returned(l)
            seg = memoryview(hot)[l * ld.stride:l * ld.stride + p.seg_bytes]
            ok, why, evs = ld.scatter(self.kv[l], self.ids, c, seg, self.batch, gpu)
            sync_all(evs if unsignalled(gpu) else [])
            self.finish(l, c, ok, why, seg)   # pageable source: staged by the driver at once
            return
        st = p.staging.pin(self.keys[c])
        if st is not None:  # being stored by this process: its staging is whole
            self._returned(l)
            try:
                ok, why, evs = ld.scatter(self.kv[l], self.ids, c, st.views[l], self.batch, gpu)
                if unsignalled(gpu):
                    sync_all(evs)
                self.finish(l, c, ok, why, st.views[l])
                sync_all(evs)
            finally:
                p.staging.unpin(st)
            p.metrics.bump(load_from_inflight=1)
            return
        slot = self.filling[c]
        if slot is not None and gpu is None:
            # the read lands in the chunk's host-tier copy and is scattered from there: no
            # staging slab and no second copy (a slot is page-aligned, strides are aligned, so
            # O_DIRECT reads into it); on the GPU path staging stays the source (pinned)
            slab, seg = None, memoryview(slot)[l * ld.stride:l * ld.stride + p.seg_bytes]
        else:
            slab = p.staging.acquire_load_slab()
            seg = slab[:p.seg_bytes]
        t0, token = time.perf_counter(), p.meter.start()
        try:
            g = p.store.get(self.keys[c], [seg], layers=[l], lengths=ld.lengths)
        except BaseException as e:  # e.g. closed meanwhile: this chunk fails
            self._returned(l)
            p.meter.cancel(token)
            if slab is not None:
                p.staging.release_load_slab(slab)
            self.finish(l, c, False, f"error: {e}", None)
            return
        g.add_done_callback(lambda f: self._on_segment(f, l, c, seg, slab, t0, token))

    def _returned(self, l: int) -> None:
        """Segment ``l`` of a chunk no longer waits on a file read: the window may move on."""
        with self.lock:
            self.unread[l] -= 1
            go = not self.issuing and self._issuable()
            self.issuing |= go
        if not go:
            return
        try:   # never issue in an I/O completion thread: a read's slab may wait on its peers
            self.pool.submit(self._issue_ready)
        except RuntimeError:   # the loader shut down (close() gave up): issue, which skips
            self._issue_ready()

    def _on_segment(self, f: Future[Any], l: int, c: int, seg: memoryview, slab: Any,
                    t0: float, token: int, queued: bool = False) -> None:
        if not queued:
            self._returned(l)
        if self.queue is not None and not queued:   # the waiter copies it
            with self.arrived:
                self.queue.append((f, l, c, seg, slab, t0, token))
                self.arrived.notify_all()
            return
        evs: list[Any] = []
        meter = self.loader.parts.meter
        try:
            exc = f.exception()
            r = None if exc is not None else f.result()
            if r:
                with self.lock:
                    first = self.file_bytes == 0
                    self.file_bytes += seg.nbytes
                # the load's first segment: one read's latency, without queueing behind its own
                meter.done(token, time.perf_counter() - self.t0 if first else None)
                ok, why, evs = self.loader.scatter(self.kv[l], self.ids, c, seg, self.batch,
                                                   self.gpu)
                if unsignalled(self.gpu):   # nobody's stream waits for it: done before it counts
                    sync_all(evs)
            else:
                meter.cancel(token)
                ok, why = False, str(exc) if exc is not None else r.reason
            if ok:
                self.finish(l, c, True, "", seg)   # copies seg into a tier slot first, if any
            else:
                self.finish(l, c, False, why, None)
        finally:   # the device may still be reading the slab
            if slab is not None:
                self.loader.parts.staging.release_load_slab_after(evs, slab)

    def finish(self, l: int, c: int, ok: bool, why: str, src: memoryview | None) -> None:
        """Segment (l, c) is in place (``ok``) or failed (``why``); completes the layers whose
        every segment is done, in order."""
        stride, seg_bytes = self.loader.stride, self.loader.parts.seg_bytes
        slot = self.filling[c]
        if ok and src is not None and slot is not None and src.obj is not slot:  # read into it
            slot[l * stride:l * stride + seg_bytes] = np.frombuffer(src, np.uint8)
        ready: list[int] = []
        with self.lock:
            if ok:
                self.filled[c] += 1
            elif c < self.first_bad:
                self.first_bad, self.reason = c, why
            elif c == self.first_bad and self.reason == "missing" and why.startswith("corrupt"):
                self.reason = why   # a corrupt object, removed while its other layers loaded
            self.left[l] -= 1
            while self.next_layer < self.nl and self.left[self.next_layer] == 0:
                ready.append(self.next_layer)
                self.next_layer += 1
            last = bool(ready) and self.next_layer == self.nl
        for r in ready:
            self.lf.layer(r).set_result(None)
        if ready:
            with self.arrived:   # a waiter of that layer stops pumping
                self.arrived.notify_all()
        if last:
            self._complete()


__all__ = ["LoadFuture", "LoadResult", "Loader", "fail_load"]
