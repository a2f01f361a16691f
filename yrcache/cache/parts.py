# SPDX-License-Identifier: Apache-2.0
"""What a Cache is made of, shared by its store writers (:mod:`.writer`) and its loader
(:mod:`.loader`): the store, the staging, the host tier, the metrics, the chunk copier, and the
operations a close drains."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..futures import Future
from ..store.store import Store
from .layout import KVLayout
from .metrics import IoMeter, Metrics
from .prefetch import Prefetcher
from .staging import Staging
from .tier import HostTier
from .transfer import ChunkCopier


class Operations:
    """Stores and loads in flight (what ``close`` waits for)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()

    def track(self, f: Future[Any]) -> None:
        with self._lock:
            self._pending.add(f)

        def done(_: Future[Any]) -> None:
            with self._lock:
                self._pending.discard(f)
        f.add_done_callback(done)

    def pending(self) -> list[Future[Any]]:
        with self._lock:
            return list(self._pending)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)


@dataclass(frozen=True)
class CacheParts:
    """One Cache's parts and settings, as its writers and loader see them."""
    layout: KVLayout
    mode: str                 # "async" or "sync"
    chunk_tokens: int
    seg_bytes: int            # one layer of one chunk
    store: Store
    staging: Staging
    tier: HostTier
    metrics: Metrics
    copier: ChunkCopier
    operations: Operations
    committer: ThreadPoolExecutor   # CUDA stores: waits for the gathers, then publishes
    prefetch: Prefetcher
    meter: IoMeter            # file reads (loads and prefetches): what a load planner needs
    store_meter: IoMeter      # object puts: how far behind the background stores are
    #: stores yield above this smoothed put latency (s; 0: never): new ones are dropped while
    #: others are in flight, before a slow file system's backlog delays loads
    store_yield_s: float


__all__ = ["CacheParts", "Operations"]
