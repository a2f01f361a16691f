# SPDX-License-Identifier: Apache-2.0
"""What travels between the connector's roles each step (pickled by vLLM): the scheduler's plan to
the workers, and the workers' report back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .compat import KVConnectorMetadata, KVConnectorStats, KVConnectorWorkerMetadata


@dataclass
class LoadOp:
    req_id: str
    #: namespace hex -> keys of the chunks to load (chunk ``first_chunk`` onwards)
    keys: dict[str, list[bytes]]
    first_chunk: int
    #: blocks of those chunks in order (chunk_tokens // block_tokens each); -1: the engine
    #: already holds that block (local prefix hit) or it lies past the hit: left untouched
    block_ids: list[int]
    #: vLLM load_async: the request waits parked until the load is done (reported in
    #: finished_recving); else the load runs under this step's forward pass, layer by layer
    park: bool
    #: namespace hex -> keys of tail objects (one block each, in the namespace's tail namespace)
    #: that follow the chunks, and the blocks they load into
    tail_keys: dict[str, list[bytes]] = field(default_factory=dict)
    tail_block_ids: list[int] = field(default_factory=list)


@dataclass
class PrefetchOp:
    req_id: str
    #: namespace hex -> keys of the chunks to read ahead (not held by vLLM's prefix cache)
    keys: dict[str, list[bytes]]
    first_chunk: int


@dataclass
class StoreOp:
    req_id: str
    keys: dict[str, list[bytes]]        # namespace hex -> keys of chunks first_chunk onwards
    parents: dict[str, bytes]           # namespace hex -> key before first_chunk (or the root)
    first_chunk: int
    block_ids: list[int]
    #: chunks [lo, hi) (absolute indices) are written even where an object exists: their load
    #: failed, so what is there may be damaged (a store that skipped it would keep the damage)
    replace: tuple[int, int] = (0, 0)
    #: a finished request's tail: one block per key, in the tail namespace of each namespace
    #: (keys still under the chunk namespace's hex), first_chunk counts blocks; its KV is all
    #: computed, so the worker gathers every layer at once (there is no forward pass for it)
    tail: bool = False


@dataclass
class YRCacheMetadata(KVConnectorMetadata):
    loads: list[LoadOp] = field(default_factory=list)
    stores: list[StoreOp] = field(default_factory=list)
    #: requests whose blocks the scheduler keeps until a worker reports them in finished_sending
    delayed: list[str] = field(default_factory=list)
    #: requests preempted this step: their blocks are about to be reused
    preempted: list[str] = field(default_factory=list)
    #: the scheduler's step number
    step: int = 0
    #: step -> True if every worker loaded that step's chunks (its held stores may be published)
    settled: dict[int, bool] = field(default_factory=dict)
    #: queued requests whose KV the workers read ahead into memory
    prefetches: list[PrefetchOp] = field(default_factory=list)
    #: requests whose read-ahead is no longer wanted (aborted, finished, preempted)
    released: list[str] = field(default_factory=list)


@dataclass
class YRCacheWorkerMeta(KVConnectorWorkerMetadata):
    #: namespace hex -> keys now published (stored, or found already stored)
    published: dict[str, list[bytes]] = field(default_factory=dict)
    #: namespace hex -> keys a planned store did not publish (staging full, I/O error, aborted)
    unpublished: dict[str, list[bytes]] = field(default_factory=dict)
    #: request -> first chunk whose load failed this step (its later chunks get recomputed)
    load_failed: dict[str, int] = field(default_factory=dict)
    #: requests with gathers still reading their blocks (GPU copy streams; never on CPU)
    gathering: set[str] = field(default_factory=set)
    #: gathers complete asynchronously (after the step's output) on this worker
    async_gathers: bool = False
    #: why this worker disabled the connector ("" if it did not)
    disabled: str = ""
    #: steps with loads under the forward pass that this worker has checked (the scheduler
    #: settles them: clean if no worker reported a failed load with them)
    loaded_steps: set[int] = field(default_factory=set)
    #: request -> chunks of its read-ahead ready in memory (leading, from its first chunk)
    prefetched: dict[str, int] = field(default_factory=dict)
    #: the worker's file-read meter (Cache.read_rates), sent when it changed
    rates: dict[str, float | None] = field(default_factory=dict)
    #: (seconds the model waited for loads, bytes they read from files), per step with loads
    load_waits: list[tuple[float, int]] = field(default_factory=list)

    def aggregate(self, other: Any) -> YRCacheWorkerMeta:
        for mine, theirs in ((self.published, other.published),
                             (self.unpublished, other.unpublished)):
            for ns, keys in theirs.items():
                mine.setdefault(ns, []).extend(keys)
        for r, c in other.load_failed.items():
            self.load_failed[r] = min(c, self.load_failed.get(r, c))
        self.gathering |= other.gathering
        self.loaded_steps |= other.loaded_steps
        self.async_gathers = self.async_gathers or other.async_gathers
        self.disabled = self.disabled or other.disabled
        self.load_waits.extend(other.load_waits)
        for r, n in other.prefetched.items():   # a chunk is ready when every rank has it
            self.prefetched[r] = min(n, self.prefetched.get(r, n))
        for k, v in other.rates.items():   # the slowest rank decides
            mine = self.rates.get(k)
            if v is not None:
                slower = min if k == "read_bandwidth_Bps" else max
                self.rates[k] = v if mine is None else slower(mine, v)
        return self


@dataclass
class YRCacheStats(KVConnectorStats):
    """Counters since the last report, and latency samples (lists, seconds); vLLM sums them over
    workers, logs ``reduce()`` (the counters) and hands them to /metrics (:mod:`.prom`)."""

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for k, v in (other.data or {}).items():
            if isinstance(v, (int, float)):
                self.data[k] = self.data.get(k, 0) + v
            elif isinstance(v, list):
                self.data[k] = [*self.data.get(k, []), *v]
        return self

    def reduce(self) -> dict[str, int | float]:
        return {k: v for k, v in self.data.items() if isinstance(v, (int, float))}

    def reset(self) -> None:
        self.data = {}

    def is_empty(self) -> bool:
        return not any(self.data.values())
