# SPDX-License-Identifier: Apache-2.0
"""The load-or-recompute planner's arithmetic (the real-engine behaviour is in
test_vllm_prefetch.py): the cheapest prefix wins, unmeasured means load, a stall means recompute,
prefetched chunks count as nearly free, the static rule overrides it all."""
from __future__ import annotations

import time

import pytest

from yrcache.integrations.vllm.planner import STALLED_S, Planner

CHUNK, CHUNK_BYTES = 256, 1 << 20


def planner(**rates) -> Planner:
    p = Planner(CHUNK, CHUNK_BYTES, -1)
    p.prefill_tps = rates.pop("tps", 10_000.0)
    p.reads({"read_latency_s": 0.001, "read_bandwidth_Bps": 1e9, "read_stall_s": 0.0, **rates})
    return p


def test_fast_storage_loads_and_slow_storage_recomputes() -> None:
    # 8 chunks = 2048 tokens: recompute 0.2 s; load 1 ms + 8 MiB at 1 GB/s = 9 ms
    d = planner().decide(0, 2048, 0, 0)
    assert d.choice == "load" and d.tokens == 2048 and d.load_s < d.recompute_s
    d = planner(read_latency_s=0.5).decide(0, 2048, 0, 0)
    assert d.choice == "recompute" and d.tokens == 0
    d = planner(read_bandwidth_Bps=10e6).decide(0, 2048, 0, 0)   # 8 MiB at 10 MB/s: 0.84 s
    assert d.choice == "recompute"


def test_short_hits_are_recomputed_and_queued_loads_count() -> None:
    p = planner(read_latency_s=0.02)
    assert p.decide(0, 128, 0, 0).choice == "recompute"      # 12.8 ms of compute vs 21 ms
    assert p.decide(0, 4096, 0, 0).choice == "load"
    # the same hit behind 1 GiB of loads already planned this step: recompute instead
    assert p.decide(0, 4096, 0, 1 << 30).choice == "recompute"


def test_only_what_the_engine_lacks_is_weighed() -> None:
    p = planner(read_latency_s=0.02)
    d = p.decide(3840, 4096, 0, 0)         # the engine holds all but 256 tokens: 25.6 ms
    assert d.choice == "load" or d.recompute_s < 0.03
    assert p.decide(4096, 4096, 0, 0).tokens == 4096


def test_prefetched_chunks_are_nearly_free() -> None:
    p = planner(read_latency_s=0.5)        # files are slow...
    d = p.decide(0, 2048, 8, 0)            # ...but every chunk is in memory already
    assert d.choice == "prefetched" and d.tokens == 2048
    d = p.decide(0, 2048, 4, 0)            # half in memory: load that, recompute the rest
    assert d.choice == "prefetched" and d.tokens == 4 * CHUNK


def test_a_stall_recomputes_all_but_memory() -> None:
    p = planner(read_stall_s=STALLED_S + 1)
    assert p.decide(0, 2048, 0, 0).tokens == 0
    d = p.decide(0, 2048, 2, 0)
    assert d.choice == "prefetched" and d.tokens == 2 * CHUNK
    # a shorter stall weighs as read latency
    assert planner(read_stall_s=0.5).decide(0, 2048, 0, 0).choice == "recompute"


def test_unmeasured_loads_and_static_rule_overrides() -> None:
    p = Planner(CHUNK, CHUNK_BYTES, -1)
    assert p.decide(0, 256, 0, 0).choice == "load"       # no prefill rate yet: never guess
    s = Planner(CHUNK, CHUNK_BYTES, 512)
    s.prefill_tps = 1e9                                   # even if recompute looks free
    assert s.decide(0, 512, 0, 0).tokens == 512 and s.decide(0, 256, 0, 0).tokens == 0
    assert Planner(CHUNK, CHUNK_BYTES, 0).decide(0, 128, 0, 0).tokens == 128


def test_prefill_rate_from_step_timings() -> None:
    p = Planner(CHUNK, CHUNK_BYTES, -1)
    p.step_built(1000, loads=False)
    time.sleep(0.05)
    p.step_done()
    assert p.prefill_tps is not None and 5_000 < p.prefill_tps <= 20_000
    rate = p.prefill_tps
    for tokens, loads in ((10, False), (5000, True)):   # decode steps and loading steps: ignored
        p.step_built(tokens, loads=loads)
        time.sleep(0.01)
        p.step_done()
    assert p.prefill_tps == rate
    p.step_done()   # an output without a step (vLLM's empty steps): ignored


@pytest.mark.parametrize("bw", [None, 0.0])
def test_no_bandwidth_yet_counts_latency_only(bw) -> None:
    p = Planner(CHUNK, CHUNK_BYTES, -1)
    p.prefill_tps = 10_000.0
    p.reads({"read_latency_s": 0.001, "read_bandwidth_Bps": bw, "read_stall_s": 0.0})
    assert p.load_seconds(8) == pytest.approx(0.001)


def test_measured_load_waits_replace_the_read_meter() -> None:
    """Once steps have loaded, what the model's thread waited per byte decides: a root whose
    loads stall the engine is recomputed however fast its meter looked, and one whose loads hide
    behind compute is loaded however slow single reads are."""
    p = planner()                                      # the meter says: fast
    assert p.decide(0, 2048, 0, 0).choice == "load"
    p.load_waited(0.8, 8 << 20)                        # but 8 MiB cost the engine 0.8 s
    assert p.decide(0, 2048, 0, 0).choice == "recompute"
    q = planner(read_latency_s=0.5)                    # the meter says: slow
    assert q.decide(0, 2048, 0, 0).choice == "recompute"
    q.load_waited(0.0, 8 << 20)                        # loads were hidden behind compute
    assert q.decide(0, 2048, 0, 0).choice == "load"
    p.load_waited(0.0, 8 << 20)                        # it follows a change within a few steps
    p.load_waited(0.0, 8 << 20)
    assert p.decide(0, 2048, 0, 0).choice == "load"
    assert p.snapshot()["load_wait_s_per_MiB"] < 0.05
