# SPDX-License-Identifier: Apache-2.0
"""A Cache's counters and recent latencies, and their Prometheus export."""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

COUNTERS = ("stores", "store_chunks", "store_existing", "store_replaced",
            "store_dropped_staging", "store_dropped_read_only", "store_failed", "store_aborted",
            "store_dropped_close", "loads", "load_chunks", "load_partial", "load_from_inflight",
            "load_tier_hits", "bytes_gathered", "bytes_scattered", "prefetch_chunks",
            "prefetch_read", "prefetch_shared", "prefetch_hits", "prefetch_late",
            "prefetch_failed", "prefetch_budget_full", "prefetch_cancelled", "prefetch_wasted",
            "prefetch_evicted", "store_dropped_slow")

#: operations whose latency and bandwidth are kept, and how many recent ones
OPERATIONS = ("store", "load")
WINDOW = 2048


class Metrics:
    """Counters (``bump``) and, per operation, the (seconds, bytes moved) of recent ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._recent: dict[str, deque[tuple[float, int]]] = {
            op: deque(maxlen=WINDOW) for op in OPERATIONS}

    def bump(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self._counters[k] += v

    def record(self, op: str, seconds: float, nbytes: int) -> None:
        with self._lock:
            self._recent[op].append((seconds, nbytes))

    def counters(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._counters)

    def latencies(self) -> dict[str, Any]:
        """p50/p99 latency (seconds) and bandwidth (bytes/s) of each operation's recent runs."""
        d: dict[str, Any] = {}
        with self._lock:
            for op, q in self._recent.items():
                xs = sorted(t for t, _ in q)
                d[f"{op}_latency_p50_s"] = xs[len(xs) // 2] if xs else None
                d[f"{op}_latency_p99_s"] = xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else None
                secs = sum(t for t, _ in q)
                d[f"{op}_bandwidth_Bps"] = sum(b for _, b in q) / secs if secs > 0 else None
        return d


_GAUGE_PREFIXES = ("staging_", "host_tier_", "store_index", "store_usage", "store_capacity",
                   "prefetch_chunks_", "prefetch_owners", "prefetch_bytes", "read_",
                   "chunks_being", "operations_in")


def prometheus_collector(stats: Callable[[], dict[str, Any]], ns: str, registry: Any = None, *,
                         prefix: str = "yrcache") -> Any:
    """Register (and return) a prometheus_client collector exporting ``stats()`` (a Cache's, with
    the store's under "store"): counters as ``<prefix>_<name>_total``, the rest as gauges, with
    the namespace ``ns`` as a label."""
    from prometheus_client import REGISTRY
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Any:
            st = stats()
            store = st.pop("store")
            flat = {**st, **{f"store_{k}": v for k, v in store.items()}}
            for name, v in sorted(flat.items()):
                if isinstance(v, dict):
                    fam = CounterMetricFamily(f"{prefix}_{name}", name, labels=["ns", "key"])
                    for k, n in v.items():
                        fam.add_metric([ns, str(k)], n)
                    yield fam
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    gauge = name.startswith(_GAUGE_PREFIXES) or name.endswith(("_s", "_Bps"))
                    fam = (GaugeMetricFamily if gauge else CounterMetricFamily)(
                        f"{prefix}_{name}", name, labels=["ns"])
                    fam.add_metric([ns], v)
                    yield fam

    collector = _Collector()
    (registry or REGISTRY).register(collector)
    return collector





class IoMeter:
    """File I/O as a planner needs it: smoothed latency (time to the first completed operation of
    a transfer, so queueing behind the transfer's own operations is not counted), smoothed
    bandwidth of whole transfers beyond that latency, and the age of the oldest operation still
    out (a stalled file system shows there long before any operation completes)."""

    ALPHA = 0.2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._out: dict[int, float] = {}
        self._next = 0
        self.latency_s: float | None = None
        self.bandwidth_Bps: float | None = None

    def start(self) -> int:
        with self._lock:
            self._next += 1
            self._out[self._next] = time.monotonic()
            return self._next

    def cancel(self, token: int) -> None:
        with self._lock:
            self._out.pop(token, None)

    def done(self, token: int, latency_s: float | None = None) -> None:
        """An operation finished; ``latency_s``: a latency sample (a transfer's first)."""
        with self._lock:
            self._out.pop(token, None)
        if latency_s is not None:
            self.observe(latency_s)

    def observe(self, latency_s: float) -> None:
        """A latency sample of an operation not tracked from its start."""
        with self._lock:
            self.latency_s = _ewma(self.latency_s, latency_s, self.ALPHA)

    def transfer(self, seconds: float, nbytes: int) -> None:
        """A whole transfer moved ``nbytes`` in ``seconds`` (its operations overlapped). Only
        the time beyond one latency counts, and only when there is enough of it to say."""
        with self._lock:
            lat = self.latency_s or 0.0
            if nbytes > 0 and seconds > 2 * lat:
                self.bandwidth_Bps = _ewma(self.bandwidth_Bps, nbytes / (seconds - lat),
                                           self.ALPHA)

    def snapshot(self) -> dict[str, float | None]:
        with self._lock:
            now = time.monotonic()
            stall = now - min(self._out.values()) if self._out else 0.0
            return {"read_latency_s": self.latency_s, "read_bandwidth_Bps": self.bandwidth_Bps,
                    "read_stall_s": stall}


def _ewma(old: float | None, x: float, alpha: float) -> float:
    return x if old is None else old + alpha * (x - old)


__all__ = ["COUNTERS", "Metrics", "IoMeter", "prometheus_collector"]
