# SPDX-License-Identifier: Apache-2.0
"""Read-ahead (Cache.prefetch): chunks read verified into host memory before their load, so the
load copies them from memory; shared between owners, bounded by a budget, released on abort, never
serving damaged bytes; and the read meter a load planner uses."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from yrcache.cache.cache import Cache

from .test_cache import CHUNK, LAYOUT, NS, PER, paged_kv, same


def _stored(root: Path, rng: np.random.Generator, chunks: int, **kw):
    kv = paged_kv(rng)
    toks = rng.integers(0, 50_000, CHUNK * chunks)
    c = Cache(root, NS, LAYOUT, mode="sync", staging_bytes=4 << 20, janitor_period=0, **kw)
    ids = rng.permutation(64)[:PER * chunks]
    assert c.store(toks, kv, ids).result().stored == chunks
    return c, kv, toks, ids


@contextlib.contextmanager
def faults(c: Cache, spec: str) -> Iterator[None]:
    """I/O faults in the cache's engine for the block's duration (csrc/io/faults.h)."""
    c.store_.engine._inject_faults(spec)
    try:
        yield
    finally:
        c.store_.engine._inject_faults("")


def _wait(pred, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def _check_loaded(c: Cache, kv, toks, ids, chunks: int, rng: np.random.Generator) -> None:
    dst = [np.zeros_like(x) for x in kv]
    dst_ids = rng.permutation(64)[:PER * chunks]
    r = c.load_chunks(c.keys(toks), dst, dst_ids).result(timeout=30)
    assert r.loaded == chunks
    for layer in range(len(kv)):
        assert same(dst[layer][dst_ids], kv[layer][ids])


def test_prefetched_chunks_serve_the_load_from_memory(data_dir: Path) -> None:
    rng = np.random.default_rng(1)
    c, kv, toks, ids = _stored(data_dir / "root", rng, 5)
    with c:
        keys = c.keys(toks)
        assert c.prefetch(keys, "r1") == 5
        _wait(lambda: c.prefetched(keys) == 5)
        reads = c.store_.engine.stats()["bytes_read"]
        _check_loaded(c, kv, toks, ids, 5, rng)
        st = c.stats()
        assert st["prefetch_hits"] == 5 and st["prefetch_read"] == 5
        assert c.store_.engine.stats()["bytes_read"] == reads   # no file read for the load
        c.release_prefetch("r1")
        assert c.stats()["prefetch_wasted"] == 0
        assert c.stats()["prefetch_chunks_held"] == 0
        assert c.read_rates()["read_latency_s"] is not None



def test_chunks_in_the_host_tier_are_not_read_ahead(data_dir: Path) -> None:
    """A queued request's chunks that the host tier holds are in memory already: read ahead are
    only the others, and all count as ready for the planner."""
    rng = np.random.default_rng(11)
    obj = LAYOUT.num_layers * max(4096, LAYOUT.segment_bytes(CHUNK))
    c, kv, toks, ids = _stored(data_dir / "root", rng, 4, host_tier_bytes=2 * obj)
    with c:
        keys = c.keys(toks)
        hot = [k for k in keys if k in c._tier.keys()]
        assert len(hot) == 2                          # the tier holds 2 of the 4 stored chunks
        reads = c.store_.engine.stats()["bytes_read"]
        assert c.prefetch(keys, "r1") == 4
        _wait(lambda: c.prefetched(keys) == 4)
        assert c.stats()["prefetch_read"] == 2        # only the chunks not in the tier were read
        cold = [k for k in keys if k not in hot]      # whole objects, header and all
        assert c.store_.engine.stats()["bytes_read"] - reads == \
            sum(os.path.getsize(c.store_.path_of(k)) for k in cold)
        _check_loaded(c, kv, toks, ids, 4, rng)
        st = c.stats()
        assert st["prefetch_hits"] == 2 and st["load_tier_hits"] == 2
        c.release_prefetch("r1")

def test_two_owners_read_once_and_release_frees(data_dir: Path) -> None:
    rng = np.random.default_rng(2)
    c, kv, toks, ids = _stored(data_dir / "root", rng, 4)
    with c:
        keys = c.keys(toks)
        c.prefetch(keys, "a")
        c.prefetch(keys[:2], "b")
        _wait(lambda: c.prefetched(keys) == 4)
        st = c.stats()
        assert st["prefetch_read"] == 4 and st["prefetch_shared"] == 2
        c.release_prefetch("a")      # "b" still holds the first two
        assert c.prefetched(keys) == 2 and c.stats()["prefetch_wasted"] == 2
        c.release_prefetch("b")
        st = c.stats()
        assert st["prefetch_chunks_held"] == 0 and st["prefetch_owners"] == 0
        assert st["prefetch_wasted"] == 4


def test_budget_bounds_memory_and_stale_chunks_are_evicted(data_dir: Path) -> None:
    rng = np.random.default_rng(3)
    c, kv, toks, ids = _stored(data_dir / "root", rng, 6)
    with c:
        chunk_bytes = c._prefetch.chunk_bytes
    c = Cache(data_dir / "root", NS, LAYOUT, staging_bytes=4 << 20, janitor_period=0,
              prefetch_bytes=3 * chunk_bytes)
    with c:
        keys = c.keys(toks)
        assert c.prefetch(keys, "big") == 3          # the budget holds three
        _wait(lambda: c.prefetched(keys) == 3)
        assert c.stats()["prefetch_budget_full"] == 3
        assert c.stats()["prefetch_bytes_allocated"] == 3 * chunk_bytes
        c._prefetch.ttl_s = 0.0                      # unused chunks now count as stale
        assert c.prefetch(keys[3:], "next") == 3     # they give their memory to these
        _wait(lambda: c.prefetched(keys[3:]) == 3)
        st = c.stats()
        assert st["prefetch_evicted"] == 3 and st["prefetch_bytes_allocated"] == 3 * chunk_bytes
        assert c.prefetched(keys) == 0               # "big"'s chunks are gone: its load reads
        _check_loaded(c, kv, toks, ids, 6, rng)      # files for those, memory for the rest
        assert c.stats()["prefetch_hits"] == 3
        c.release_prefetch("big")
        c.release_prefetch("next")
        assert c.stats()["prefetch_owners"] == 0


def test_corrupt_object_is_never_prefetched(data_dir: Path) -> None:
    rng = np.random.default_rng(4)
    root = data_dir / "root"
    c, kv, toks, ids = _stored(root, rng, 3)
    with c:
        keys = c.keys(toks)
        p = c.store_.path_of(keys[1])
        with open(p, "r+b") as f:          # flip a byte inside layer 0's segment
            f.seek(4096 + 10)
            b = f.read(1)
            f.seek(4096 + 10)
            f.write(bytes([b[0] ^ 0xFF]))
        c.prefetch(keys, "r")
        _wait(lambda: c.stats()["prefetch_read"] + c.stats()["prefetch_failed"] == 3)
        assert c.stats()["prefetch_failed"] == 1
        assert c.prefetched(keys) == 1
        dst = [np.zeros_like(x) for x in kv]
        r = c.load_chunks(keys, dst, rng.permutation(64)[:PER * 3]).result(timeout=30)
        assert r.loaded == 1                 # chunk 1 is gone: the caller recomputes from it
        c.release_prefetch("r")
        assert c.stats()["prefetch_chunks_held"] == 0


@pytest.mark.parametrize("then", ["aborted", "loaded"])
def test_owner_leaves_or_loads_while_reads_are_out(data_dir: Path, then: str) -> None:
    """Aborted while its reads are out or queued: queued reads are cancelled, nothing stays held.
    Loaded while they are out: the load reads the files for chunks not ready (late)."""
    rng = np.random.default_rng(5)
    c, kv, toks, ids = _stored(data_dir / "root", rng, 8)
    with c:
        keys = c.keys(toks)
        with faults(c, "read:delay50@1+"):
            c.prefetch(keys, "r")
            if then == "loaded":
                _check_loaded(c, kv, toks, ids, 8, rng)
            c.release_prefetch("r")
            _wait(lambda: c.stats()["prefetch_chunks_pending"] == 0)
        st = c.stats()
        if then == "aborted":
            assert st["prefetch_cancelled"] >= 8 - 4      # at most 4 reads were out
        else:
            assert st["prefetch_late"] >= 1
        assert st["prefetch_chunks_held"] == 0 and st["prefetch_owners"] == 0
        _check_loaded(c, kv, toks, ids, 8, rng)


def test_stalled_reads_show_in_the_meter(data_dir: Path) -> None:
    rng = np.random.default_rng(7)
    c, kv, toks, ids = _stored(data_dir / "root", rng, 2)
    with c:
        with faults(c, "read:delay400@1+"):
            c.prefetch(c.keys(toks), "r")
            time.sleep(0.2)
            assert c.read_rates()["read_stall_s"] >= 0.15
        _wait(lambda: c.prefetched(c.keys(toks)) == 2)
        assert c.read_rates()["read_stall_s"] == 0.0
        assert c.read_rates()["read_latency_s"] >= 0.3


@pytest.mark.parametrize("bad", [None, 3, b"x"])
def test_bad_owner(data_dir: Path, bad) -> None:
    with Cache(data_dir / "root", NS, LAYOUT, staging_bytes=4 << 20, janitor_period=0) as c:
        with pytest.raises(TypeError, match="owner"):
            c.prefetch([b"\0" * 16], bad)


def test_async_stores_yield_on_a_slow_file_system(data_dir: Path) -> None:
    """Stores above the put-latency high-water mark are dropped (and counted) while others are
    in flight; with none in flight the next store goes ahead and measures again."""
    rng = np.random.default_rng(8)
    kv = paged_kv(rng)
    with Cache(data_dir / "root", NS, LAYOUT, mode="async", staging_bytes=4 << 20,
               janitor_period=0, store_yield_s=0.05) as c:
        def store(seed: int) -> object:
            toks = np.random.default_rng(seed).integers(0, 50_000, CHUNK * 2)
            return c.store(toks, kv, rng.permutation(64)[:PER * 2])
        with faults(c, "write:delay100@1+"):
            assert store(1).result(timeout=30).stored == 2   # nothing measured yet: stored
            slow = store(2)                                  # none in flight: a probe, stored
            dropped = store(3).result(timeout=30)            # behind it: yields
            assert dropped.dropped == 2 and dropped.stored == 0
            assert slow.result(timeout=30).stored == 2
        st = c.stats()
        assert st["store_dropped_slow"] == 2 and st["store_dropped_staging"] == 0
        assert store(4).result(timeout=30).stored == 2       # drained: stores go ahead again


def test_load_in_waiter_copies_only_in_the_waiting_thread(data_dir: Path) -> None:
    """in_waiter: reads go on in the background, but nothing is copied into the engine's memory
    until the caller waits (a CPU engine's compute threads never share a core with copies)."""
    rng = np.random.default_rng(9)
    c, kv, toks, ids = _stored(data_dir / "root", rng, 4)
    with c:
        c.mode = "async"
        c._parts = dataclasses.replace(c._parts, mode="async")
        dst = [np.zeros_like(x) for x in kv]
        dst_ids = rng.permutation(64)[:PER * 4]
        lf = c.load_chunks(c.keys(toks), dst, dst_ids, in_waiter=True)
        _wait(lambda: c.store_.engine.stats()["bytes_read"] > 0)
        time.sleep(0.2)                                   # every read is back by now
        assert not any(d.view(np.uint16).any() for d in dst)    # ...and nothing was copied
        assert not lf.layer(0).done()
        assert lf.wait_layer(0, timeout=30) is None
        assert same(dst[0][dst_ids], kv[0][ids])
        r = lf.result(timeout=30)                         # copies the other layers here too
        assert r.loaded == 4
        for layer in range(len(kv)):
            assert same(dst[layer][dst_ids], kv[layer][ids])
