# SPDX-License-Identifier: Apache-2.0
"""yrcache's metrics in vLLM's own ``/metrics`` (vLLM's connector Prometheus hook).

vLLM sums the connector's per-step stats (:class:`.metadata.YRCacheStats`: counter deltas from the
scheduler and every worker, plus latency samples) and hands them to :meth:`YRCachePromMetrics.
observe` in the process that serves ``/metrics`` (the API server). Names follow vLLM's
(``vllm:`` prefix, ``_total`` for counters, ``_seconds`` histograms), with vLLM's labels (model,
engine) and one label of ours where a family splits (decision, reason, errno, object).
"""
from __future__ import annotations

from typing import Any

from .compat import KVConnectorPromMetrics

#: counter -> (help, label name or None, {stats key: label value (None: no label)})
COUNTERS: dict[str, tuple[str, str | None, dict[str, str | None]]] = {
    "vllm:yrcache_lookup_hits": (
        "Requests whose lookup found stored KV past what vLLM's own prefix cache held.",
        None, {"requests_hit": None}),
    "vllm:yrcache_lookup_misses": (
        "Requests whose lookup found no stored KV past what vLLM's own prefix cache held.",
        None, {"requests_miss": None}),
    "vllm:yrcache_lookup_round_trips": (
        "Rounds of parallel existence checks the scheduler's lookups sent to the cache root.",
        None, {"lookup_round_trips": None}),
    "vllm:yrcache_lookup_existence_checks": (
        "Existence checks (one metadata operation each) the scheduler's lookups made.", None,
        {"lookup_existence_checks": None}),
    "vllm:yrcache_loaded_tokens": (
        "Prompt tokens whose KV was planned to load from yrcache.", None, {"load_tokens": None}),
    "vllm:yrcache_loaded_bytes": (
        "Bytes of KV loaded into vLLM's KV cache.", None, {"bytes_scattered": None}),
    "vllm:yrcache_loaded_objects": (
        "Objects loaded: whole chunks, and one-block tails.", "object",
        {"load_chunks": "chunk", "tail_load_chunks": "tail"}),
    "vllm:yrcache_stored_bytes": (
        "Bytes of KV copied out of vLLM's KV cache to be stored.", None,
        {"bytes_gathered": None}),
    "vllm:yrcache_stored_objects": (
        "Objects written: whole chunks, and one-block tails.", "object",
        {"store_chunks": "chunk", "tail_store_chunks": "tail"}),
    "vllm:yrcache_stores_dropped": (
        "Objects not stored, by reason.", "reason",
        {"store_dropped_staging": "staging_full", "store_dropped_slow": "slow_file_system",
         "store_failed": "failed", "store_aborted": "aborted", "dropped_full": "root_full",
         "tail_store_dropped_staging": "staging_full", "tail_store_failed": "failed"}),
    "vllm:yrcache_prefetch_chunks": (
        "Chunks read ahead for queued requests, by outcome.", "outcome",
        {"prefetch_hits": "used", "prefetch_wasted": "wasted", "prefetch_late": "late",
         "prefetch_evicted": "evicted", "prefetch_cancelled": "cancelled",
         "prefetch_failed": "failed"}),
    "vllm:yrcache_decisions": (
        "Per-request choice between loading a hit and recomputing it.", "decision",
        {"decision_load": "load", "decision_prefetched": "prefetched",
         "decision_recompute": "recompute"}),
    "vllm:yrcache_corrupt_objects": (
        "Objects that failed verification (removed; the request recomputed them).", None,
        {"corrupt": None}),
    "vllm:yrcache_load_failures": (
        "Requests with chunks that failed to load (vLLM recomputed them).", None,
        {"load_failures": None}),
}
#: stats keys "errno_<NAME>" count I/O errors by errno, in this family
ERRORS = "vllm:yrcache_io_errors"
#: histogram -> (help, stats key holding a list of samples)
HISTOGRAMS: dict[str, tuple[str, str]] = {
    "vllm:yrcache_load_seconds": (
        "Time from a load's start to its last layer in place (one request's hit).",
        "load_seconds"),
    "vllm:yrcache_store_seconds": (
        "Time from a store's commit to its objects being published (one request's step).",
        "store_seconds"),
}
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class YRCachePromMetrics(KVConnectorPromMetrics):
    def __init__(self, vllm_config: Any, metric_types: dict[type, type],
                 labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[str, Any] = {}
        for name, (doc, label, _) in COUNTERS.items():
            self._counters[name] = self._counter_cls(
                name=name, documentation=doc, labelnames=[*labelnames, *([label] if label else [])])
        self._errors = self._counter_cls(name=ERRORS, documentation="I/O errors by errno.",
                                         labelnames=[*labelnames, "errno"])
        self._hists = {name: self._histogram_cls(name=name, documentation=doc, buckets=BUCKETS,
                                                 labelnames=labelnames)
                       for name, (doc, _) in HISTOGRAMS.items()}
        # every series exists from the start (at 0), so dashboards and rate() see it
        for lv in per_engine_labelvalues.values():
            for name, (_, _, keys) in COUNTERS.items():
                for value in set(keys.values()):
                    self._series(name, lv, value)

    def _series(self, name: str, lv: list[object], value: str | None) -> Any:
        c = self._counters[name]
        return c.labels(*lv, value) if COUNTERS[name][1] else c.labels(*lv)

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        data = transfer_stats_data or {}
        lv = self.per_engine_labelvalues.get(engine_idx, [])
        for name, (_, _, keys) in COUNTERS.items():
            for key, value in keys.items():
                n = data.get(key)
                if isinstance(n, (int, float)) and n > 0:
                    self._series(name, lv, value).inc(n)
        for key, n in data.items():
            if key.startswith("errno_") and isinstance(n, (int, float)) and n > 0:
                self._errors.labels(*lv, key[len("errno_"):]).inc(n)
        for name, (_, key) in HISTOGRAMS.items():
            samples = data.get(key)
            if isinstance(samples, list):
                h = self._hists[name].labels(*lv)
                for s in samples:
                    if isinstance(s, (int, float)):
                        h.observe(s)


__all__ = ["YRCachePromMetrics"]
