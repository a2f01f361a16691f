# SPDX-License-Identifier: Apache-2.0
"""The Cache API on CPU: store/load of paged and dense KV, per-layer futures, sync/async,
backpressure, partial loads, loads of chunks still being stored, bad inputs."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import yrcache
from yrcache.cache.cache import Cache
from yrcache.cache.layout import KVLayout

L, BT, HEADS, HD, CHUNK = 4, 16, 2, 8, 64
PAGE = 2 * BT * HEADS * HD * 2          # [2 (K,V), BT, HEADS, HD] float16
LAYOUT = KVLayout.paged("test-paged", num_layers=L, dtype="float16", kv_heads=HEADS,
                        head_size=HD, block_tokens=BT, page_bytes=PAGE)
NS = LAYOUT.namespace("test-model", chunk_tokens=CHUNK)
PER = CHUNK // BT


def paged_kv(rng: np.random.Generator, blocks: int = 64) -> list[np.ndarray]:
    return [rng.integers(0, 2**16, (blocks, 2, BT, HEADS, HD), dtype=np.uint16).view(np.float16)
            for _ in range(L)]


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a.view(np.uint16) == b.view(np.uint16)).all())


@pytest.fixture
def root(data_dir: Path) -> Path:
    return data_dir / "root"


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("chunks", [1, 3, 7])
def test_paged_roundtrip(root: Path, mode: str, chunks: int) -> None:
    rng = np.random.default_rng(chunks)
    kv = paged_kv(rng)
    toks = rng.integers(0, 50_000, CHUNK * chunks + 5)     # a partial tail chunk is not stored
    src_ids = rng.permutation(64)[:PER * chunks + 1]
    with Cache(root, NS, LAYOUT, mode=mode, staging_bytes=4 << 20, janitor_period=0) as c:
        sf = c.store(toks, kv, src_ids)
        if mode == "sync":
            assert sf.done()
        assert sf.source_released.done()
        assert sf.result() == yrcache.cache.StoreResult(chunks, chunks, 0, 0, 0)
        assert c.lookup(toks) == CHUNK * chunks
        dst = [np.zeros_like(x) for x in kv]
        dst_ids = rng.permutation(64)[:PER * chunks]
        lf = c.load(toks[:c.lookup(toks)], dst, dst_ids)
        r = lf.result(timeout=30)
        assert (r.tokens, r.loaded) == (CHUNK * chunks, chunks)
        n = PER * chunks
        for layer in range(L):
            assert same(dst[layer][dst_ids[:n]], kv[layer][src_ids[:n]])
            others = np.setdiff1d(np.arange(64), dst_ids[:n])
            assert not dst[layer][others].view(np.uint16).any()
        again = c.store(toks, kv, src_ids).result()          # dedup
        assert again.existing == chunks and again.stored == 0


def test_dense_roundtrip(root: Path) -> None:
    layout = KVLayout.dense(num_layers=2, dtype="float32", kv_heads=3, head_size=4)
    ns = layout.namespace("hf-test", chunk_tokens=32)
    rng = np.random.default_rng(1)
    kv = [(rng.standard_normal((2, 3, 100, 4)).astype(np.float32),
           rng.standard_normal((2, 3, 100, 4)).astype(np.float32)) for _ in range(2)]
    toks = rng.integers(0, 1000, 100)
    with Cache(root, ns, layout, staging_bytes=1 << 20, janitor_period=0) as c:
        assert c.store(toks, kv, batch=1).result().stored == 3
        out = [(np.zeros_like(k), np.zeros_like(v)) for k, v in kv]
        assert c.load(toks, out, batch=0).result().tokens == 96
        for (k, v), (k2, v2) in zip(kv, out):
            assert np.array_equal(k2[0, :, :96], k[1, :, :96])
            assert np.array_equal(v2[0, :, :96], v[1, :, :96])
            assert not k2[0, :, 96:].any() and not k2[1].any()


def test_layer_futures_complete_in_order(root: Path) -> None:
    rng = np.random.default_rng(2)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 6)
    ids = np.arange(PER * 6)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        c.store(toks, kv, ids).result()
        dst = [np.zeros_like(x) for x in kv]
        order: list[int] = []
        lock = threading.Lock()
        lf = c.load(toks, dst, ids)
        for i in range(L):
            lf.layer(i).add_done_callback(lambda _, i=i: (lock.acquire(), order.append(i),
                                                          lock.release()))
        lf.layer(0).result(timeout=30)
        assert same(dst[0][ids], kv[0][ids])     # layer 0 is in place when its future says so
        lf.result(timeout=30)
        assert order == list(range(L))
        assert all(lf.layer(i).done() for i in range(L))


def test_backpressure_drops_stores(root: Path) -> None:
    """One store slab: the second chunk of an async store finds staging full and is dropped."""
    rng = np.random.default_rng(3)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 4)
    obj = LAYOUT.num_layers * max(4096, LAYOUT.segment_bytes(CHUNK))
    with Cache(root, NS, LAYOUT, staging_bytes=obj + obj, janitor_period=0) as c:
        r = c.store(toks, kv, np.arange(PER * 4)).result()
        assert r.dropped >= 1 and r.stored + r.dropped == 4
        assert c.stats()["store_dropped_staging"] == r.dropped
        assert c.lookup(toks) >= CHUNK


def test_partial_load_after_missing_and_corrupt(root: Path) -> None:
    rng = np.random.default_rng(4)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 5)
    ids = np.arange(PER * 5)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        c.store(toks, kv, ids).result()
        keys = c.keys(toks)
        os.unlink(c.store_.path_of(keys[3]))                  # evicted elsewhere
        p = c.store_.path_of(keys[1])                         # damaged: chunk 1 fails first
        with open(p, "r+b") as f:
            f.seek(4096 + 100)
            b = f.read(1)
            f.seek(4096 + 100)
            f.write(bytes([b[0] ^ 0x10]))
        dst = [np.zeros_like(x) for x in kv]
        r = c.load(toks, dst, ids).result(timeout=30)
        assert (r.tokens, r.loaded) == (CHUNK, 1) and r.reason.startswith("corrupt")
        for layer in range(L):
            assert same(dst[layer][ids[:PER]], kv[layer][ids[:PER]])   # chunk 0 is right
            # every other block holds nothing, or its own verified KV: never bad data (layers
            # are read independently, so valid layers of a failed chunk may land)
            for ch in range(1, 5):
                blk = ids[ch * PER:(ch + 1) * PER]
                got = dst[layer][blk].view(np.uint16)
                assert not got.any() or same(dst[layer][blk], kv[layer][blk]), (layer, ch)
            if layer == 0:  # the damaged segment itself (layer 0 of chunk 1) is never written
                assert not dst[0][ids[PER:2 * PER]].view(np.uint16).any()
        assert c.stats()["load_partial"] == 1


def test_load_of_a_chunk_still_being_stored(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 2)
    ids = np.arange(PER * 2)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        held: list[yrcache.Future[bool]] = []
        real_put = c.store_.put

        def slow_put(*a: object, **kw: object) -> yrcache.Future[bool]:
            f: yrcache.Future[bool] = yrcache.Future()
            held.append((f, a, kw))  # type: ignore[arg-type]
            return f

        monkeypatch.setattr(c.store_, "put", slow_put)
        sf = c.store(toks, kv, ids)
        assert sf.source_released.done() and not sf.done()     # writes still pending
        dst = [np.zeros_like(x) for x in kv]
        r = c.load(toks, dst, ids).result(timeout=30)
        assert r.tokens == 2 * CHUNK and c.stats()["load_from_inflight"] == 2 * L
        for layer in range(L):
            assert same(dst[layer][ids], kv[layer][ids])
        for f, a, kw in held:                                   # let the writes finish
            f.set_result(real_put(*a, **kw).result())
        assert sf.result().stored == 2


def test_concurrent_stores_and_loads(root: Path) -> None:
    rng = np.random.default_rng(6)
    kv = paged_kv(rng, 256)
    prompts = [rng.integers(0, 1000, CHUNK * 3) for _ in range(6)]
    errors: list[BaseException] = []
    with Cache(root, NS, LAYOUT, staging_bytes=8 << 20, janitor_period=0) as c:
        def worker(i: int) -> None:
            try:
                ids = np.arange(PER * 3) + i * PER * 3
                c.store(prompts[i], kv, ids).result()
                dst = [np.zeros_like(x) for x in kv]
                r = c.load(prompts[i], dst, ids).result(timeout=60)
                assert r.tokens == 3 * CHUNK
                for layer in range(L):
                    assert same(dst[layer][ids], kv[layer][ids])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
    assert not errors, errors


def test_asyncio(root: Path) -> None:
    rng = np.random.default_rng(7)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 2)
    ids = np.arange(PER * 2)

    async def main() -> int:
        with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
            await c.store(toks, kv, ids)
            dst = [np.zeros_like(x) for x in kv]
            lf = c.load(toks, dst, ids)
            await lf.layer(0)
            return (await lf).tokens

    assert asyncio.run(main()) == 2 * CHUNK


def test_bad_inputs(root: Path) -> None:
    rng = np.random.default_rng(8)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 2)
    ids = np.arange(PER * 2)
    with pytest.raises(ValueError, match="disagree"):
        Cache(root, dataclasses.replace(NS, num_layers=5), LAYOUT)
    with pytest.raises(ValueError, match="mode"):
        Cache(root, NS, LAYOUT, mode="lazy")
    c = Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0)
    with pytest.raises(ValueError, match="layers"):
        c.store(toks, kv[:3], ids)
    with pytest.raises(ValueError, match="byte blocks"):
        c.store(toks, [x[:, :, :8] for x in kv], ids)
    with pytest.raises(ValueError, match="needs block_ids"):
        c.store(toks, kv)
    with pytest.raises(ValueError, match="at least 8 blocks"):
        c.store(toks, kv, ids[:5])
    with pytest.raises(ValueError, match="out of range"):
        c.store(toks, kv, ids + 100)
    with pytest.raises(ValueError, match="token ids"):
        c.store([-1] * CHUNK, kv, ids)
    c.close()
    with pytest.raises(yrcache.ClosedError):
        c.load(toks, kv, ids)


def test_host_tier_serves_hot_chunks(root: Path) -> None:
    rng = np.random.default_rng(9)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 3)
    ids = np.arange(PER * 3)
    obj = L * max(4096, LAYOUT.segment_bytes(CHUNK))
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, host_tier_bytes=2 * obj,
               janitor_period=0) as c:
        c.store(toks, kv, ids).result()
        assert c.stats()["host_tier_chunks"] == 2          # bounded: LRU of 2 chunks
        for p in map(c.store_.path_of, c.keys(toks)):    # files gone: the tier still serves
            os.unlink(p)
        keys = c.keys(toks)
        hot = set(c._tier.keys())
        lead = next((i for i, k in enumerate(keys) if k not in hot), len(keys))
        dst = [np.zeros_like(x) for x in kv]
        r = c.load(toks, dst, ids).result(timeout=30)
        # the leading chunks still in the tier load; the first one evicted (its file is gone
        # too) ends the match (puts finish in any order, so which one that is varies)
        assert r.tokens == lead * CHUNK and lead < 3
        for layer in range(L):
            assert same(dst[layer][ids[:lead * PER]], kv[layer][ids[:lead * PER]])
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, host_tier_bytes=4 * obj,
               janitor_period=0) as c:
        c.store(toks, kv, ids).result()
        dst = [np.zeros_like(x) for x in kv]
        assert c.load(toks, dst, ids).result().tokens == 3 * CHUNK
        for layer in range(L):
            assert same(dst[layer][ids], kv[layer][ids])
        assert c.stats()["load_tier_hits"] == 3



@pytest.mark.parametrize("mode,in_waiter", [("async", False), ("async", True), ("sync", False)])
def test_loads_fill_the_host_tier_with_verified_chunks_only(root: Path, mode: str,
                                                            in_waiter: bool) -> None:
    """Chunks read from files (stored by another Cache) enter the reader's host tier; a chunk
    with a corrupt layer does not, and later loads are served from the tier with the stored
    bytes even after the files are gone. ``in_waiter``: the copies run in the waiting thread
    (vLLM's CPU path)."""

    def load(c: Cache, dst: list[np.ndarray]) -> int:
        f = c.load_chunks(c.keys(toks), dst, ids, in_waiter=in_waiter)
        for layer in range(L):   # the model's order: each layer waited for in turn
            assert f.wait_layer(layer, timeout=30) is None
        return f.result(timeout=30).tokens

    rng = np.random.default_rng(12)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 3)
    ids = np.arange(PER * 3)
    obj = L * max(4096, LAYOUT.segment_bytes(CHUNK))
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as w:
        assert w.store(toks, kv, ids).result(timeout=30).stored == 3
    with Cache(root, NS, LAYOUT, mode=mode, staging_bytes=1 << 20, host_tier_bytes=8 * obj,
               janitor_period=0) as c:
        keys = c.keys(toks)
        p2 = Path(c.store_.path_of(keys[2]))
        good = p2.read_bytes()
        bad = bytearray(good)
        bad[-64] ^= 0x10                                # chunk 2, last layer's payload
        p2.write_bytes(bytes(bad))
        dst = [np.zeros_like(x) for x in kv]
        assert load(c, dst) == 2 * CHUNK                # chunk 2 failed verification: a miss
        assert set(c._tier.keys()) == set(keys[:2])    # only whole, verified chunks entered
        p2.write_bytes(good)
        dst = [np.zeros_like(x) for x in kv]
        assert load(c, dst) == 3 * CHUNK
        st = c.stats()
        assert st["load_tier_hits"] == 2 and st["host_tier_chunks"] == 3
        for k in keys:                                  # files gone: all three from memory
            os.unlink(c.store_.path_of(k))
        dst = [np.zeros_like(x) for x in kv]
        assert load(c, dst) == 3 * CHUNK
        for layer in range(L):
            assert same(dst[layer][ids], kv[layer][ids])
        assert c.stats()["load_tier_hits"] == 5


def test_stats_latencies_and_prometheus(root: Path) -> None:
    prometheus_client = pytest.importorskip("prometheus_client") if not os.environ.get("CI") \
        else __import__("prometheus_client")
    rng = np.random.default_rng(10)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 2)
    ids = np.arange(PER * 2)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        c.store(toks, kv, ids).result()
        c.load(toks, [np.zeros_like(x) for x in kv], ids).result()
        s = c.stats()
        assert s["store_latency_p50_s"] > 0 and s["load_latency_p99_s"] > 0
        assert s["load_bandwidth_Bps"] > 0 and s["chunks_being_stored"] == 0
        reg = prometheus_client.CollectorRegistry()
        c.prometheus_collector(reg)
        text = prometheus_client.generate_latest(reg).decode()
        assert f'yrcache_loads_total{{ns="{NS.hex}"}} 1.0' in text
        assert "yrcache_store_objects_stored_total" in text


def test_exit_drains_async_stores(root: Path) -> None:
    from .helpers import run_child
    code = f"""
import numpy as np
from tests.test_cache import NS, LAYOUT, paged_kv, PER, CHUNK
from yrcache.cache.cache import Cache
rng = np.random.default_rng(11)
c = Cache({str(root)!r}, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0)
f = c.store(rng.integers(0, 1000, CHUNK * 3), paged_kv(rng), np.arange(PER * 3))
print(f.done())   # exits without close(): the atexit hook drains the writes
"""
    out = run_child(code, env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    rng = np.random.default_rng(11)
    toks = rng.integers(0, 1000, CHUNK * 3)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        assert c.lookup(toks) == 3 * CHUNK


def test_bad_tensors(root: Path) -> None:
    torch = pytest.importorskip("torch") if not os.environ.get("CI") else __import__("torch")
    rng = np.random.default_rng(12)
    toks = rng.integers(0, 1000, CHUNK)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        meta = [torch.empty((64, 2, BT, HEADS, HD), dtype=torch.float16, device="meta")] * L
        with pytest.raises(ValueError, match="tensor is on meta"):
            c.store(toks, meta, np.arange(PER))
        wrong = [torch.zeros((64, 2, BT, HEADS, HD), dtype=torch.float32)] * L
        with pytest.raises(ValueError, match="float32, the layout is float16"):
            c.store(toks, wrong, np.arange(PER))
    dense = KVLayout.dense(num_layers=1, dtype="bfloat16", kv_heads=2, head_size=4)
    with Cache(root, dense.namespace("d", chunk_tokens=16), dense, staging_bytes=1 << 20,
               janitor_period=0) as c:
        k = torch.zeros((1, 2, 16, 4), dtype=torch.float16)                    # not bf16
        with pytest.raises(ValueError, match="float16, the layout is bfloat16"):
            c.store(rng.integers(0, 9, 16), [(k, k)])
        short = torch.zeros((1, 2, 8, 4), dtype=torch.bfloat16)                # too few tokens
        with pytest.raises(ValueError, match="tokens"):
            c.store(rng.integers(0, 9, 16), [(short, short)])
        good = torch.randn((1, 2, 16, 4)).to(torch.bfloat16)
        assert c.store(rng.integers(0, 9, 16), [(good, good)]).result().stored == 1


def test_load_refuses_repeated_destinations_and_float_ids(root: Path) -> None:
    rng = np.random.default_rng(13)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 2)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        c.store(toks, kv, np.arange(PER * 2)).result()
        with pytest.raises(ValueError, match="repeat a block"):
            c.load(toks, kv, np.array([0, 1, 2, 3] * 2))
        with pytest.raises(TypeError, match="integers"):
            c.load(toks, kv, np.arange(PER * 2) + 0.5)


def test_lookup_sees_chunks_being_stored(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(14)
    kv = paged_kv(rng)
    toks = rng.integers(0, 1000, CHUNK * 2)
    with Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0) as c:
        held: list = []
        real_put = c.store_.put

        def slow_put(*a: object, **kw: object) -> yrcache.Future[bool]:
            f: yrcache.Future[bool] = yrcache.Future()
            held.append((f, a, kw))
            return f

        monkeypatch.setattr(c.store_, "put", slow_put)
        sf = c.store(toks, kv, np.arange(PER * 2))
        assert c.lookup(toks) == 2 * CHUNK and c.store_.lookup(c.keys(toks)) == 0
        again = c.store(toks, kv, np.arange(PER * 2)).result()   # same chunks, in flight
        assert again.existing == 2 and again.stored == 0
        for f, a, kw in held:
            f.set_result(real_put(*a, **kw).result())
        assert sf.result().stored == 2 and c.stats()["staging_free_store_slabs"] > 0


def test_close_gives_up_after_its_timeout(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(15)
    kv = paged_kv(rng)
    c = Cache(root, NS, LAYOUT, staging_bytes=1 << 20, janitor_period=0)
    monkeypatch.setattr(c.store_, "put", lambda *a, **kw: yrcache.Future())   # never completes
    c.store(rng.integers(0, 1000, CHUNK), kv, np.arange(PER))
    c.close(timeout=0.3)
    assert c.stats()["store_dropped_close"] == 1 and c.store_._state.closed


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_begin_store_layer_by_layer_and_partial_chunk_load(root: Path, mode: str) -> None:
    """The engine-facing path: keys from the caller, one gather per layer as a forward pass writes
    it, a second store continuing the chain; then a load that starts inside a chunk (-1 skips the
    blocks the engine already holds) leaves those blocks untouched."""
    rng = np.random.default_rng(11)
    kv = paged_kv(rng)
    toks = rng.integers(0, 50_000, CHUNK * 3)
    ids = rng.permutation(64)[:PER * 3]
    with Cache(root, NS, LAYOUT, mode=mode, staging_bytes=4 << 20, janitor_period=0) as c:
        keys = c.keys(toks)
        w = c.begin_store(keys[:2], kv, ids[:PER * 2], parent=NS.digest)
        assert w.chunks == 2
        for layer in range(L):
            w.gather(layer)
        assert w.commit().result().stored == 2
        w2 = c.begin_store(keys, kv, ids, parent=NS.digest)   # chunks 0, 1 exist: only chunk 2
        assert (w2.chunks, w2.existing) == (1, 2)
        with pytest.raises(ValueError, match="not gathered"):
            w2.commit()                       # no layer gathered: dropped, keys released
        assert c.stats()["store_aborted"] == 1
        w3 = c.begin_store(keys[2:], kv, ids[PER * 2:], parent=keys[1], first_index=2)
        for layer in reversed(range(L)):      # any order
            w3.gather(layer)
        assert w3.commit().result().stored == 1
        assert c.lookup_keys(keys) == 3 and c.lookup(toks) == 3 * CHUNK
        hdr = c.store_.read_header(keys[2])
        assert hdr is not None and hdr.chunk_index == 2 and hdr.parent == keys[1]

        dst = [np.full_like(x, 7) for x in kv]
        out = rng.permutation(64)[:PER * 3].astype(np.int64)
        skip = out.copy()
        skip[:PER + 1] = -1                   # the engine holds chunk 0 and one block of chunk 1
        r = c.load_chunks(keys, dst, skip).result(timeout=30)
        assert r.loaded == 3
        for layer in range(L):
            assert same(dst[layer][out[PER + 1:]], kv[layer][ids[PER + 1:]])
            assert (dst[layer][out[:PER + 1]].view(np.uint16) == np.float16(7).view(
                np.uint16)).all()
        with pytest.raises(ValueError, match="out of range"):
            c.load_chunks(keys, dst, np.full(PER * 3, -2))
        with pytest.raises(ValueError, match="out of range"):
            c.begin_store(keys, kv, skip, parent=NS.digest)   # a store cannot skip blocks


def test_reads_go_out_layer_0_first_then_a_window(root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Layer 0's reads go out alone, later layers AHEAD_LAYERS at a time, and a load waiting on
    its reads holds no thread: four loads at once (two loader threads) all have layer 0 out."""
    from yrcache.cache.loader import AHEAD_LAYERS
    rng = np.random.default_rng(11)
    kv = paged_kv(rng, blocks=4 * 2 * PER)
    loads = [(rng.integers(0, 1000, CHUNK * 2), np.arange(i * 2 * PER, (i + 1) * 2 * PER))
             for i in range(4)]
    with Cache(root, NS, LAYOUT, staging_bytes=4 << 20, janitor_period=0) as c:
        for toks, ids in loads:
            c.store(toks, kv, ids).result()
        real_get = c.store_.get
        held: list[tuple[int, yrcache.Future[object], tuple[object, ...], dict[str, object]]] = []
        cv = threading.Condition()

        def held_get(*a: object, **kw: object) -> yrcache.Future[object]:
            f: yrcache.Future[object] = yrcache.Future()
            with cv:
                held.append((kw["layers"][0], f, a, kw))  # type: ignore[index]
                cv.notify_all()
            return f

        def issued(want: int) -> list[int]:
            with cv:
                assert cv.wait_for(lambda: len(held) >= want, timeout=30), len(held)
                return sorted(h[0] for h in held)

        def release(layer: int) -> None:
            with cv:   # every read of the layer is out (a window opens on a loader thread)
                assert cv.wait_for(lambda: sum(h[0] == layer for h in held) == 8, timeout=30)
                mine = [h for h in held if h[0] == layer]
                held[:] = [h for h in held if h[0] != layer]
            for _, f, a, kw in mine:
                f.set_result(real_get(*a, **kw).result())

        monkeypatch.setattr(c.store_, "get", held_get)
        dst = [np.zeros_like(x) for x in kv]
        lfs = [c.load(toks, dst, ids) for toks, ids in loads]
        assert issued(4 * 2) == [0] * 8          # every load's layer 0, nothing more
        release(0)
        assert issued(4 * 2 * AHEAD_LAYERS) == sorted(list(range(1, 1 + AHEAD_LAYERS)) * 8)
        for l in range(1, L):
            release(l)
        for lf in lfs:
            assert lf.result(timeout=30).tokens == 2 * CHUNK
        for _, ids in loads:
            for layer in range(L):
                assert same(dst[layer][ids], kv[layer][ids])
