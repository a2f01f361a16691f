# SPDX-License-Identifier: Apache-2.0
"""Read-ahead: chunks a queued request will load, read verified into host memory before the
request runs, so that its load scatters from memory instead of waiting for storage.

A prefetch names its owner (a request id) and the chunks' keys. A chunk wanted by several owners
is read once. Reads go out a few chunks at a time (loads that a forward pass waits on are never
stuck behind a long prefetch queue), each one whole object (every layer) into a slot of
``budget_bytes``; a chunk enters only verified (the store checks header and checksums), so a
load never scatters bytes that were not a valid object. A load takes the chunks that are ready
(:meth:`Prefetcher.claim`); a chunk still being read is read again from the file by the load,
layer by layer, as without prefetch. A slot is reused only when no owner wants the chunk and no
load still copies from it. Counters: ``prefetch_chunks`` (asked), ``prefetch_read`` (read into
memory), ``prefetch_shared`` (asked again while held: not read twice), ``prefetch_hits`` (served
a load), ``prefetch_late`` (not ready when its load started), ``prefetch_failed`` (missing,
corrupt or an I/O error), ``prefetch_budget_full`` (skipped: no memory), ``prefetch_cancelled``
(its owner went away before it was read), ``prefetch_wasted`` (read, never used), and
``prefetch_evicted`` (ready but unused for ``ttl_s``: its memory went to a newer prefetch).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..futures import Future
from ..io.buffers import BufferPool
from ..io.engine import IoEngine
from ..store.store import Store
from .metrics import IoMeter, Metrics

logger = logging.getLogger(__name__)

#: chunk reads a prefetcher keeps in flight (loads slip in between them)
MAX_INFLIGHT = 4

QUEUED, READING, READY = "queued", "reading", "ready"


@dataclass(eq=False)
class _Entry:
    key: bytes
    state: str = QUEUED
    owners: set[str] = field(default_factory=set)
    slot: np.ndarray | None = None
    readers: int = 0          # loads copying from it now
    used: bool = False        # served a load
    ready_at: float = 0.0


class Prefetcher:
    """Chunks read ahead into at most ``budget_bytes`` of host memory (0: off)."""

    def __init__(self, store: Store, metrics: Metrics, meter: IoMeter, *, budget_bytes: int,
                 chunk_bytes: int, seg_bytes: int, stride: int, num_layers: int,
                 ttl_s: float = 60.0) -> None:
        self.store, self.metrics, self.meter = store, metrics, meter
        self.chunk_bytes, self.ttl_s = chunk_bytes, ttl_s
        self.slots = budget_bytes // chunk_bytes if chunk_bytes else 0
        self._views = [(l * stride, l * stride + seg_bytes) for l in range(num_layers)]
        self._lengths = [seg_bytes] * num_layers
        self._lock = threading.Lock()
        self._entries: dict[bytes, _Entry] = {}
        self._owned: dict[str, list[bytes]] = {}   # owner -> keys it asked for
        self._free: list[np.ndarray] = []          # slots no entry holds
        self._arena: BufferPool | None = None     # every slot, allocated once, held for good
        self._queue: deque[_Entry] = deque()
        self._reading = 0
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.slots > 0

    def allocate(self, engine: IoEngine | None = None) -> None:
        """The budget's memory, at once (page-aligned, registered with ``engine``'s io_uring,
        every page touched): done by the first prefetch, or at start-up by warm_up()."""
        with self._lock:
            if self._arena is not None or not self.enabled:
                return
            pool = BufferPool(self.chunk_bytes, self.slots, engine)
            pool.touch()
            self._arena = pool
            slabs = [pool.acquire() for _ in range(self.slots)]   # this free list owns them
            self._free = [np.frombuffer(s, np.uint8) for s in reversed(slabs) if s is not None]

    # -- the serving loop's side --------------------------------------------------------------
    def prefetch(self, owner: str, keys: Sequence[bytes]) -> int:
        """Read ``keys`` ahead for ``owner``; returns how many were taken on (the rest did not
        fit the budget). Asking again for an owner adds keys."""
        if not self.enabled or not keys:
            return 0
        taken = shared = full = 0
        if self._arena is None:
            self.allocate(self.store.engine)
        with self._lock:
            if self._closed:
                return 0
            mine = self._owned.setdefault(owner, [])
            for k in keys:
                e = self._entries.get(k)
                if e is not None:
                    if owner not in e.owners:
                        e.owners.add(owner)
                        mine.append(k)
                        shared += 1
                    taken += 1
                    continue
                slot = self._slot_locked()
                if slot is None:
                    full = len(keys) - taken   # later keys are later chunks: stop
                    break
                e = _Entry(k, owners={owner}, slot=slot)
                self._entries[k] = e
                mine.append(k)
                self._queue.append(e)
                taken += 1
            start = self._start_locked()
        self.metrics.bump(prefetch_chunks=len(keys), prefetch_shared=shared,
                          prefetch_budget_full=full)
        for i, e in enumerate(start):
            self._read(e, timed=i == 0)   # a batch's first read: a latency sample
        return taken

    def ready(self, keys: Sequence[bytes]) -> int:
        """Leading chunks of ``keys`` ready in memory."""
        n = 0
        with self._lock:
            while n < len(keys) and (e := self._entries.get(keys[n])) is not None and \
                    e.state == READY:
                n += 1
        return n

    def release(self, owner: str) -> None:
        """``owner`` no longer wants its chunks (loaded, aborted, preempted, finished)."""
        with self._lock:
            keys = self._owned.pop(owner, [])
            for k in keys:
                e = self._entries.get(k)
                if e is None:
                    continue
                e.owners.discard(owner)
                if not e.owners:
                    self._drop_locked(e)

    # -- the loader's side --------------------------------------------------------------------
    def claim(self, keys: Sequence[bytes]) -> list[np.ndarray | None]:
        """For each key, its ready chunk (pinned until :meth:`unclaim`) or None. A chunk still
        queued is cancelled for the owners that load it now; one being read counts as late."""
        out: list[np.ndarray | None] = []
        hits = late = 0
        with self._lock:
            for k in keys:
                e = self._entries.get(k)
                if e is not None and e.state == READY:
                    e.readers += 1
                    e.used = True
                    out.append(e.slot)
                    hits += 1
                else:
                    late += e is not None
                    out.append(None)
        if hits or late:
            self.metrics.bump(prefetch_hits=hits, prefetch_late=late)
        return out

    def unclaim(self, keys: Sequence[bytes], claimed: Sequence[np.ndarray | None]) -> None:
        with self._lock:
            for k, s in zip(keys, claimed):
                e = self._entries.get(k)
                if s is not None and e is not None and e.slot is s:
                    e.readers -= 1
                    if not e.owners:
                        self._drop_locked(e)

    def stats(self) -> dict[str, int]:
        with self._lock:
            held = sum(e.state == READY for e in self._entries.values())
            return {"prefetch_chunks_held": held, "prefetch_chunks_pending": len(self._entries)
                    - held, "prefetch_owners": len(self._owned),
                    "prefetch_bytes_allocated": self.slots * self.chunk_bytes
                    if self._arena is not None else 0}

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for e in list(self._entries.values()):
                e.owners.clear()
                self._drop_locked(e)
            self._owned.clear()

    # -- internals ----------------------------------------------------------------------------
    def _slot_locked(self) -> np.ndarray | None:
        if self._free:
            return self._free.pop()
        # Full: the oldest chunk read but unused for ttl_s gives its memory to this one.
        old = time.monotonic() - self.ttl_s
        stale = [e for e in self._entries.values()
                 if e.state == READY and not e.used and not e.readers and e.ready_at < old]
        if not stale:
            return None
        e = min(stale, key=lambda x: x.ready_at)
        slot = e.slot
        for o in e.owners:
            if o in self._owned and e.key in self._owned[o]:
                self._owned[o].remove(e.key)
        del self._entries[e.key]
        self.metrics.bump(prefetch_evicted=1)
        return slot

    def _drop_locked(self, e: _Entry) -> None:
        """Forget an entry nobody owns; its slot is free once no load copies from it and its
        read (if out) is back."""
        if e.readers or self._entries.get(e.key) is not e:
            return
        if e.state == READING:
            return   # _done frees it
        del self._entries[e.key]
        if e.state == QUEUED:
            self._queue.remove(e)
            self.metrics.bump(prefetch_cancelled=1)
        elif not e.used:
            self.metrics.bump(prefetch_wasted=1)
        if e.slot is not None:
            self._free.append(e.slot)

    def _start_locked(self) -> list[_Entry]:
        out = []
        while self._queue and self._reading < MAX_INFLIGHT:
            e = self._queue.popleft()
            e.state = READING
            self._reading += 1
            out.append(e)
        return out

    def _read(self, e: _Entry, timed: bool = False) -> None:
        assert e.slot is not None
        mv = memoryview(e.slot)
        t0, token = time.perf_counter(), self.meter.start()
        try:
            f = self.store.get(e.key, [mv[a:b] for a, b in self._views], lengths=self._lengths)
        except BaseException as exc:  # noqa: BLE001 - closed meanwhile: this chunk fails
            self.meter.cancel(token)
            self._done(e, False, f"error: {exc}")
            return

        def done(f: Future[Any]) -> None:
            exc = f.exception()
            r = None if exc is not None else f.result()
            ok = bool(r)
            if ok:
                self.meter.done(token, time.perf_counter() - t0 if timed else None)
            else:
                self.meter.cancel(token)
            self._done(e, ok, "" if ok else (str(exc) if exc is not None else r.reason))
        f.add_done_callback(done)

    def _done(self, e: _Entry, ok: bool, why: str) -> None:
        with self._lock:
            self._reading -= 1
            if ok:
                e.state, e.ready_at = READY, time.monotonic()
                self.metrics.bump(prefetch_read=1)
            else:   # it never serves a load: out at once, whoever owns it
                del self._entries[e.key]
                for o in e.owners:
                    if o in self._owned and e.key in self._owned[o]:
                        self._owned[o].remove(e.key)
                e.owners.clear()
                if e.slot is not None:
                    self._free.append(e.slot)
                self.metrics.bump(prefetch_failed=1)
            if not e.owners and self._entries.get(e.key) is e:
                self._drop_locked(e)
            start = [] if self._closed else self._start_locked()
        if not ok and why != "missing":
            logger.info("yrcache: prefetch of chunk %s failed (%s); its load reads the file",
                        e.key.hex()[:16], why)
        for n in start:
            self._read(n)


__all__ = ["Prefetcher"]
