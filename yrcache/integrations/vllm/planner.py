# SPDX-License-Identifier: Apache-2.0
"""Load or recompute, per request, from live measurements (the scheduler's side).

Inputs, all measured in this deployment: what loads from files cost the model's thread (seconds it
waited per byte read, smoothed over the steps that loaded; before the first such step, the
workers' read meters, latency and bandwidth, stand in), the age of the oldest read still out (a
stalled file system), the
engine's prefill rate (tokens per second of steps that loaded nothing, from the step timings the
scheduler sees), what prefetch already holds for the request, and the bytes of loads planned ahead
of it. For a hit of chunks beyond the engine's own prefix cache, three prefixes are weighed:
nothing (recompute all), what prefetch holds (memory copies only), or the whole hit; the cheapest
wins, a tie goes to loading. Both costs are linear in chunks, so no other prefix can be cheaper.
Until the prefill rate is measured the planner loads (a first hit is never recomputed on a guess).
``min_load_tokens >= 0`` replaces all of this with the static rule (hits shorter than it are
recomputed).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

logger = logging.getLogger("yrcache.vllm")

ALPHA = 0.2
#: the cost of loading changes by regimes (a file system that slows down, a cache that warms):
#: follow it fast; decisions only turn on differences of a factor, not on noise
WAIT_ALPHA = 0.5
#: steps with fewer new tokens than this say more about per-step overhead than prefill speed
MIN_RATE_TOKENS = 64
#: a read outstanding this long means a stalled file system: every hit is recomputed
STALLED_S = 2.0
#: time of a chunk copy from host memory (prefetched) relative to reading it from a file
MEMORY_FACTOR = 0.05


@dataclass(frozen=True)
class Decision:
    tokens: int          # hit tokens to load (local + this = where vLLM starts computing)
    choice: str          # "load", "prefetched", "recompute", "static"
    load_s: float        # estimated time to load the whole hit
    recompute_s: float   # estimated time to recompute it

    def log_fields(self) -> str:
        return f"{self.choice}: load {self.load_s * 1e3:.1f} ms vs recompute " \
               f"{self.recompute_s * 1e3:.1f} ms"


class Planner:
    def __init__(self, chunk_tokens: int, chunk_bytes: int, min_load_tokens: int) -> None:
        self.chunk, self.chunk_bytes, self.static = chunk_tokens, chunk_bytes, min_load_tokens
        self.read_latency_s: float | None = None
        self.read_bandwidth_Bps: float | None = None
        self.read_stall_s = 0.0
        self.prefill_tps: float | None = None
        self.wait_per_byte: float | None = None   # model-thread seconds per byte read
        self._steps: deque[tuple[float, int, bool]] = deque(maxlen=64)

    # -- measurements ------------------------------------------------------------------------
    def step_built(self, tokens: int, loads: bool) -> None:
        self._steps.append((time.monotonic(), tokens, loads))

    def step_done(self) -> None:
        """A step's output arrived: its duration is a prefill-rate sample if it loaded nothing
        and computed enough tokens."""
        if not self._steps:
            return
        t0, tokens, loads = self._steps.popleft()
        dt = time.monotonic() - t0
        if not loads and tokens >= MIN_RATE_TOKENS and dt > 0:
            tps = tokens / dt
            self.prefill_tps = tps if self.prefill_tps is None else \
                self.prefill_tps + ALPHA * (tps - self.prefill_tps)

    def load_waited(self, seconds: float, nbytes: int) -> None:
        """A step's loads read ``nbytes`` from files and the model's thread waited ``seconds``
        for them (under async loading, what was not hidden behind compute)."""
        if nbytes > 0 and seconds >= 0:
            x = seconds / nbytes
            self.wait_per_byte = x if self.wait_per_byte is None else \
                self.wait_per_byte + WAIT_ALPHA * (x - self.wait_per_byte)

    def reads(self, rates: dict[str, float | None]) -> None:
        """The workers' read meters (the slowest worker's view)."""
        if rates.get("read_latency_s") is not None:
            self.read_latency_s = rates["read_latency_s"]
        if rates.get("read_bandwidth_Bps"):
            self.read_bandwidth_Bps = rates["read_bandwidth_Bps"]
        self.read_stall_s = float(rates.get("read_stall_s") or 0.0)

    def snapshot(self) -> dict[str, float | None]:
        return {"read_latency_s": self.read_latency_s, "read_bandwidth_Bps":
                self.read_bandwidth_Bps, "read_stall_s": self.read_stall_s,
                "prefill_tokens_per_s": self.prefill_tps, "load_wait_s_per_MiB":
                None if self.wait_per_byte is None else self.wait_per_byte * (1 << 20)}

    # -- the decision ------------------------------------------------------------------------
    def load_seconds(self, chunks: int, queued_bytes: int = 0) -> float:
        """Estimated time to read ``chunks`` chunks from files behind ``queued_bytes`` of loads
        already planned."""
        if chunks <= 0:
            return 0.0
        nbytes = chunks * self.chunk_bytes + queued_bytes
        if self.wait_per_byte is not None:   # what loads actually cost the engine
            return self.read_stall_s + nbytes * self.wait_per_byte
        lat = max(self.read_latency_s or 0.0, self.read_stall_s)
        bw = self.read_bandwidth_Bps
        return lat + (nbytes / bw if bw else 0.0)

    def decide(self, local: int, hit_tokens: int, prefetched_chunks: int,
               queued_bytes: int) -> Decision:
        """``local``: tokens the engine holds; ``hit_tokens``: tokens stored (block aligned);
        ``prefetched_chunks``: leading chunks of the request ready in memory."""
        ext = hit_tokens - local
        c0, c1 = local // self.chunk, -(-hit_tokens // self.chunk)
        if self.static >= 0:
            ok = ext >= max(self.static, 1)
            return Decision(hit_tokens if ok else local, "static", 0.0, 0.0)
        in_mem = max(0, min(prefetched_chunks, c1) - c0)
        mem_tokens = max(0, min(hit_tokens, (c0 + in_mem) * self.chunk) - local)
        from_files = (c1 - c0) - in_mem
        bw = self.read_bandwidth_Bps
        mem_s = MEMORY_FACTOR * in_mem * self.chunk_bytes / bw if bw else 0.0
        load_s = mem_s + self.load_seconds(from_files, queued_bytes)
        if self.read_stall_s >= STALLED_S and from_files:
            # a stalled file system: never wait on it; what is in memory still counts
            return Decision(local + mem_tokens, "prefetched" if mem_tokens else "recompute",
                            load_s, ext / self.prefill_tps if self.prefill_tps else 0.0)
        if self.prefill_tps is None:
            return Decision(hit_tokens, "load", load_s, 0.0)
        rate = self.prefill_tps
        costs = {"load": load_s,
                 "prefetched": mem_s + (ext - mem_tokens) / rate,
                 "recompute": ext / rate}
        if not mem_tokens:
            del costs["prefetched"]
        elif not from_files:   # all of it in memory: "load" is the same plan
            del costs["load"]
        choice = min(costs, key=lambda k: (costs[k], k != "load"))
        tokens = {"load": hit_tokens, "prefetched": local + mem_tokens, "recompute": local}
        return Decision(tokens[choice], choice, load_s, ext / rate)


__all__ = ["Decision", "Planner"]
