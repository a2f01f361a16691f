# SPDX-License-Identifier: Apache-2.0
"""The object store on a local file system: publish, lookup, load with verification, dedup, MAC,
symlink confinement, capacity (janitor, LRU, orphans), restart."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

import yrcache
from yrcache.store import paths
from yrcache.store.keys import Namespace, chain_keys
from yrcache.store.store import Store

from .helpers import resident_bytes, run_child

SEG = 64 << 10


def make_ns(**kw: object) -> Namespace:
    base = dict(model="test-model", dtype="bfloat16", num_layers=4, kv_heads=2, head_size=64,
                layout="test-paged", block_tokens=16, page_bytes=4096)
    base.update(kw)
    return Namespace(**base)  # type: ignore[arg-type]


def segs_for(key: bytes, n: int = 4, nbytes: int = SEG) -> list[np.ndarray]:
    """Deterministic payload of a key: any process can check any object byte for byte."""
    rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
    return [rng.integers(0, 256, nbytes, dtype=np.uint8) for _ in range(n)]


def put_chain(st: Store, keys: list[bytes], *, n: int = 4, nbytes: int = SEG) -> list[bool]:
    futs = [st.put(k, segs_for(k, n, nbytes), parent=keys[i - 1] if i else st.ns, chunk_index=i,
                   token_count=256, dtype="bfloat16", shape=[nbytes // 2])
            for i, k in enumerate(keys)]
    return [f.result(timeout=60) for f in futs]


def chain(ns: Namespace, n: int, seed: int = 0) -> list[bytes]:
    toks = np.random.default_rng(seed).integers(0, 100_000, 256 * n)
    return chain_keys(ns.digest, toks, 256)


def empty(n: int = 4, nbytes: int = SEG) -> list[np.ndarray]:
    return [np.zeros(nbytes, np.uint8) for _ in range(n)]


@pytest.fixture
def ns() -> Namespace:
    return make_ns()


@pytest.fixture
def store(data_dir: Path, ns: Namespace):
    with Store(data_dir / "root", ns, janitor_period=0) as st:
        yield st


def test_roundtrip_whole_layers_and_ranges(store: Store) -> None:
    keys = chain(store.namespace, 3)
    assert put_chain(store, keys) == [True] * 3
    assert store.lookup(keys) == 3
    for k in keys:
        want = segs_for(k)
        out = empty()
        r = store.get(k, out, lengths=[SEG] * 4).result()      # one batch: header + segments
        assert r and r.header.chunk_index == keys.index(k)
        assert all((a == b).all() for a, b in zip(out, want))
        out = empty()
        assert store.get(k, out).result()                        # header first
        assert all((a == b).all() for a, b in zip(out, want))
        one = [np.zeros(SEG, np.uint8)]
        assert store.get(k, one, layers=[2], lengths=[SEG] * 4).result()
        assert (one[0] == want[2]).all()
        part = [np.zeros(8192, np.uint8), np.zeros(8192, np.uint8)]
        assert store.get(k, part, layers=[3, 0], byte_range=(4096, 8192)).result()
        assert (part[0] == want[3][4096:12288]).all() and (part[1] == want[0][4096:12288]).all()
    # files are where the spec says, 4 KiB-aligned segments, size = header + padded segments
    p = Path(store.path_of(keys[0]))
    assert p.parent.parent.parent.name == store.ns_hex and p.name == keys[0].hex() + ".kv"
    assert p.stat().st_size == 4096 + 4 * SEG
    s = store.stats()
    assert s["objects_stored"] == 3 and s["hits"] == 12 and s["misses"] == 0


@pytest.mark.parametrize("lengths", [[1000, 5000, 1], [4096 * 3 + 17], [512] * 130])
def test_odd_lengths_and_long_headers(store: Store, lengths: list[int]) -> None:
    """Unaligned segment lengths (padding), and 130 segments (an 8 KiB header)."""
    k = chain(store.namespace, 1, seed=7)[0]
    rng = np.random.default_rng(3)
    data = [rng.integers(0, 256, n, dtype=np.uint8) for n in lengths]
    assert store.put(k, data, parent=store.ns, chunk_index=0, token_count=16,
                     dtype="float16").result()
    out = [np.zeros(n, np.uint8) for n in lengths]
    r = store.get(k, out, lengths=lengths).result()
    assert r, r.reason
    assert all((a == b).all() for a, b in zip(out, data))
    out = [np.zeros(n, np.uint8) for n in lengths]
    assert store.get(k, out).result()
    assert all((a == b).all() for a, b in zip(out, data))


def test_lookup_prefix_holes_and_async(store: Store) -> None:
    keys = chain(store.namespace, 8)
    assert store.lookup(keys) == 0
    put_chain(store, keys[:5])
    assert store.lookup(keys) == 5
    store.delete(keys[2])
    assert store.lookup(keys) == 2          # the first hole ends the match
    fut = store.lookup_async(keys)
    assert fut.result(timeout=10) == 2
    assert store.lookup([]) == 0
    assert store.contains(keys[0]) and not store.contains(keys[2])


@pytest.mark.parametrize("stored", [0, 1, 16, 17, 100, 299, 300])
def test_long_chain_lookup_takes_log_rounds(data_dir: Path, stored: int) -> None:
    """Past the lookup threads' width a cold lookup searches (exponential probes, then parallel
    bisection): the exact stored prefix, in a few rounds of checks, far fewer checks than keys."""
    ns = make_ns()
    keys = chain(ns, 300)
    with Store(data_dir / "root", ns, janitor_period=0, lookup_threads=8) as w:
        put_chain(w, keys[:stored], n=1, nbytes=4096)
    with Store(data_dir / "root", ns, janitor_period=0, lookup_threads=8) as st:   # cold
        assert st.lookup(keys) == stored
        s = st.stats()
        assert s["lookup_rounds"] <= 6 and s["lookup_stats"] <= 60, s
        assert st.lookup(keys) == stored    # the index answers the found part
        assert st.lookup(keys[:8]) == min(8, stored)


def test_long_chain_lookup_hole_is_a_partial_load(store: Store) -> None:
    """A hole (a removed corrupt object) inside a long chain may be stepped over by the search;
    loading it then misses, so the hit ends there, and the load never returns wrong bytes."""
    keys = chain(store.namespace, 64)
    put_chain(store, keys[:64], n=1, nbytes=4096)
    store.delete(keys[40])
    with Store(store.root, store.namespace, janitor_period=0, lookup_threads=4) as st:
        n = st.lookup(keys)
        assert n in (40, 64)
        assert not st.get(keys[40], [np.zeros(4096, np.uint8)]).result(timeout=10)


def test_cold_lookup_from_another_process(store: Store, data_dir: Path) -> None:
    keys = chain(store.namespace, 40)
    put_chain(store, keys[:30], n=1, nbytes=4096)
    code = f"""
import numpy as np
from yrcache.store.keys import chain_keys
from yrcache.store.store import Store
from tests.test_store import make_ns, chain
ns = make_ns()
with Store({str(data_dir / 'root')!r}, ns, janitor_period=0) as st:
    print(st.lookup(chain(ns, 40)))
"""
    out = run_child(code, env={"PYTHONPATH": str(Path(__file__).parent.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "30"


def test_dedup_and_concurrent_same_key(store: Store) -> None:
    k = chain(store.namespace, 1)[0]
    futs = [store.put(k, segs_for(k), parent=store.ns, chunk_index=0, token_count=256,
                      dtype="bfloat16", dedup=False) for _ in range(6)]
    assert all(f.result() for f in futs)         # racing writers of one key all succeed
    assert store.put(k, segs_for(k), parent=store.ns, chunk_index=0, token_count=256,
                     dtype="bfloat16").result()
    assert store.stats()["dedup_skips"] == 1
    out = empty()
    assert store.get(k, out, lengths=[SEG] * 4).result()
    assert all((a == b).all() for a, b in zip(out, segs_for(k)))
    assert os.listdir(Path(store.root) / ".tmp") == []


def test_namespaces_are_disjoint(data_dir: Path) -> None:
    a, b = make_ns(), make_ns(salt="other-tenant")
    with Store(data_dir / "root", a, janitor_period=0) as sa, \
            Store(data_dir / "root", b, janitor_period=0) as sb:
        keys = chain(a, 2)
        put_chain(sa, keys)
        assert sb.lookup(keys) == 0
        # an object of namespace A planted in B's directory is refused (namespace mismatch)
        dst = Path(sb.path_of(keys[0]))
        dst.parent.mkdir(parents=True)
        dst.write_bytes(Path(sa.path_of(keys[0])).read_bytes())
        r = sb.get(keys[0], empty(), lengths=[SEG] * 4).result()
        assert not r and "namespace" in r.reason
        assert sb.stats()["corrupt"] == 1 and not dst.exists()


def test_object_under_another_key_is_refused(store: Store) -> None:
    k1, k2 = chain(store.namespace, 2)
    put_chain(store, [k1])
    dst = Path(store.path_of(k2))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(Path(store.path_of(k1)).read_bytes())
    r = store.get(k2, empty(), lengths=[SEG] * 4).result()
    assert not r and "key mismatch" in r.reason


def test_mac(data_dir: Path, ns: Namespace) -> None:
    secret, wrong = os.urandom(32), os.urandom(32)
    root = data_dir / "root"
    k = chain(ns, 1)[0]
    with Store(root, ns, mac_key=secret, janitor_period=0) as st:
        put_chain(st, [k])
        out = empty()
        assert st.get(k, out).result()
        assert all((a == b).all() for a, b in zip(out, segs_for(k)))
    with Store(root, ns, mac_key=wrong, janitor_period=0) as st:
        r = st.get(k, empty()).result()
        assert not r and "MAC" in r.reason
    k2 = chain(ns, 1, seed=5)[0]
    with Store(root, ns, janitor_period=0) as st:  # a writer without the key
        put_chain(st, [k2])
    with Store(root, ns, mac_key=secret, janitor_period=0) as st:
        r = st.get(k2, empty()).result()
        assert not r and "no MAC" in r.reason
    # a forged object: valid checksums, but content changed by someone without the key
    with Store(root, ns, mac_key=secret, janitor_period=0) as st:
        k3 = chain(ns, 1, seed=9)[0]
        put_chain(st, [k3])
        forged = segs_for(k3)
        forged[1][:10] ^= 0xFF
        with Store(data_dir / "scratch", ns, janitor_period=0) as plain:
            plain.put(k3, forged, parent=ns.digest, chunk_index=0, token_count=256,
                      dtype="bfloat16", shape=[SEG // 2]).result()
            raw = bytearray(Path(plain.path_of(k3)).read_bytes())
        good = Path(st.path_of(k3)).read_bytes()
        # keep the signed header, swap in the forged segment 1 and fix nothing else
        raw[:4096] = good[:4096]
        Path(st.path_of(k3)).write_bytes(bytes(raw))
        r = st.get(k3, empty()).result()
        assert not r


def test_symlinks_are_never_followed(store: Store, data_dir: Path) -> None:
    outside = data_dir / "outside"
    outside.mkdir()
    keys = chain(store.namespace, 3)
    shard = Path(store.root) / store.ns_hex / keys[0].hex()[:2]
    shard.symlink_to(outside, target_is_directory=True)   # a planted symlink
    assert store.put(keys[0], segs_for(keys[0]), parent=store.ns, chunk_index=0,
                     token_count=256, dtype="bfloat16").result() is False
    assert list(outside.rglob("*")) == []                   # nothing written outside the root
    s = store.stats()
    assert s["store_errors"] == 1 and set(s["errors_by_errno"]) & {"ELOOP", "EXDEV"}
    assert not store.get(keys[0], empty()).result()
    assert store.lookup(keys) == 0


def test_bad_arguments(store: Store) -> None:
    k = chain(store.namespace, 1)[0]
    with pytest.raises(ValueError, match="16 bytes"):
        store.put(b"short", [b"x"], parent=store.ns, chunk_index=0, token_count=1, dtype="u8")
    with pytest.raises(ValueError, match="at least one segment"):
        store.put(k, [], parent=store.ns, chunk_index=0, token_count=1, dtype="u8")
    with pytest.raises(ValueError, match="token_count"):
        store.put(k, [b"x"], parent=store.ns, chunk_index=0, token_count=0, dtype="u8")
    with pytest.raises(ValueError, match="writable"):
        store.get(k, [b"x" * SEG])
    with pytest.raises(ValueError, match="segment 0 is"):
        store.get(k, [np.zeros(10, np.uint8)], lengths=[SEG])
    with pytest.raises(ValueError, match="layers"):
        store.get(k, [np.zeros(SEG, np.uint8)] * 2, layers=[1, 1])
    with pytest.raises(TypeError):
        Store(store.root, "not-a-namespace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mac_key"):
        Store(store.root, store.namespace, mac_key=b"short")


def test_closed_store(data_dir: Path, ns: Namespace) -> None:
    st = Store(data_dir / "root", ns, janitor_period=0)
    st.close()
    st.close()
    with pytest.raises(yrcache.ClosedError):
        st.lookup([])


def test_restart_sees_everything(data_dir: Path, ns: Namespace) -> None:
    keys = chain(ns, 6)
    with Store(data_dir / "root", ns, durable=True, janitor_period=0) as st:
        assert put_chain(st, keys) == [True] * 6
    with Store(data_dir / "root", ns, janitor_period=0) as st:
        assert st.lookup(keys) == 6
        out = empty()
        assert st.get(keys[5], out, lengths=[SEG] * 4).result()
        assert (out[3] == segs_for(keys[5])[3]).all()
        rep = st.run_janitor()
        assert rep.ran and rep.objects == 6 and rep.bytes == 6 * (4096 + 4 * SEG)


def _tree_bytes(root: Path) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return sum(o.size for o in paths.walk_objects(fd))
    finally:
        os.close(fd)


def test_capacity_lru_and_orphans(data_dir: Path, ns: Namespace) -> None:
    obj = 4096 + 4 * SEG
    cap = 20 * obj
    root = data_dir / "root"
    with Store(root, ns, capacity_bytes=cap, low_watermark=0.5, high_watermark=0.9,
               janitor_period=0, touch_interval=0, orphan_grace=0) as st:
        hot = chain(ns, 4, seed=1)
        put_chain(st, hot)
        cold = [chain(ns, 1, seed=100 + i)[0] for i in range(14)]
        for k in cold:
            put_chain(st, [k])
        st.flush()
        time.sleep(0.05)
        assert st.lookup(hot) == 4              # a hit touches the whole chain
        st.flush()
        more = [chain(ns, 1, seed=200 + i)[0] for i in range(4)]
        for k in more:
            put_chain(st, [k])
        st.flush()
        rep = st.run_janitor()
        assert rep.ran and rep.evicted > 0
        assert _tree_bytes(root) <= cap * 0.5
        assert st.lookup(hot) == 4              # recently used chain survived
        assert sum(st.contains(k) for k in cold) < len(cold)
        # orphans: remove a chain's parent; its descendants go in the next pass
        st.delete(hot[1])
        rep = st.run_janitor()
        assert rep.orphans == 2 and st.lookup(hot) == 1
        assert st.stats()["evictions"] >= rep.evicted


def test_capacity_drops_when_full(data_dir: Path, ns: Namespace) -> None:
    obj = 4096 + 4 * SEG
    with Store(data_dir / "root", ns, capacity_bytes=5 * obj, janitor_period=0) as st:
        res = put_chain(st, chain(ns, 9))
        st.flush()
        s = st.stats()
        assert s["dropped_full"] >= 1 and res.count(True) <= 6   # bound: budget + bytes in flight
        assert _tree_bytes(Path(st.root)) <= 5 * obj + 4 * obj
        st.run_janitor()
        assert _tree_bytes(Path(st.root)) <= 5 * obj * 0.85


def test_janitor_thread_and_lock(data_dir: Path, ns: Namespace) -> None:
    """A background janitor brings usage under the low watermark by itself; a second janitor
    while the lock is held skips its pass."""
    obj = 4096 + 4 * SEG
    cap = 8 * obj
    with Store(data_dir / "root", ns, capacity_bytes=cap, janitor_period=0.2) as st:
        for i in range(12):
            put_chain(st, [chain(ns, 1, seed=300 + i)[0]])
        st.flush()
        deadline = time.monotonic() + 10
        while _tree_bytes(Path(st.root)) > cap * 0.85 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _tree_bytes(Path(st.root)) <= cap * 0.85
        from yrcache.store.janitor import _Flock
        lk = _Flock(st.janitor.metafd, "janitor.lock", blocking=True)
        try:
            assert st.run_janitor(blocking=False).ran is False
        finally:
            lk.release()


def test_stale_temp_files_reclaimed(data_dir: Path, ns: Namespace) -> None:
    root = data_dir / "root"
    (root / ".tmp").mkdir(parents=True)
    old = root / ".tmp" / "ffffffff-1-0-aa.tmp"            # another host's writer, long gone
    old.write_bytes(b"x" * 100)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = root / ".tmp" / "eeeeeeee-1-0-bb.tmp"          # another host, writing right now
    fresh.write_bytes(b"y")
    with Store(root, ns, janitor_period=0) as st:
        assert not old.exists() and fresh.exists()
        assert st.stats()["tmp_reclaimed"] == 1


def test_vanished_object_is_a_miss(store: Store) -> None:
    keys = chain(store.namespace, 2)
    put_chain(store, keys)
    assert store.lookup(keys) == 2
    os.unlink(store.path_of(keys[1]))                       # evicted by another node
    r = store.get(keys[1], empty(), lengths=[SEG] * 4).result()
    assert not r and r.reason == "missing"
    s = store.stats()
    assert s["misses"] == 1 and s["corrupt"] == 0 and s["errors_by_errno"] == {}
    assert store.lookup(keys) == 1                          # the index forgot it


def test_open_handles_per_layer(store: Store) -> None:
    """Layer-by-layer loads open an object and check its header once; every segment read through
    the open handle is still checksummed, so damage is found; eviction retires the handle."""
    keys = chain(store.namespace, 2)
    put_chain(store, keys)
    for k in keys:
        for layer in range(4):
            out = [np.zeros(SEG, np.uint8)]
            assert store.get(k, out, layers=[layer], lengths=[SEG] * 4).result()
            assert (out[0] == segs_for(k)[layer]).all()
    assert store.stats()["open_handle_hits"] == 6
    # bit rot in place in segment 2 of an object held open: a checksum miss, then removed
    p = Path(store.path_of(keys[0]))
    with open(p, "r+b") as f:
        f.seek(4096 + 2 * SEG + 100)
        b = f.read(1)
        f.seek(4096 + 2 * SEG + 100)
        f.write(bytes([b[0] ^ 1]))
    r = store.get(keys[0], [np.zeros(SEG, np.uint8)], layers=[2], lengths=[SEG] * 4).result()
    assert not r and "checksum" in r.reason and not p.exists()
    # delete() retires the open handle of keys[1]: the next load is a miss
    store.delete(keys[1])
    r = store.get(keys[1], [np.zeros(SEG, np.uint8)], layers=[0], lengths=[SEG] * 4).result()
    assert not r and r.reason == "missing"


def test_concurrent_flushes_do_not_block(store: Store) -> None:
    import threading
    keys = chain(store.namespace, 8)
    done = []

    def worker(part: list[bytes]) -> None:
        for k in part:
            store.put(k, segs_for(k), parent=store.ns, chunk_index=0, token_count=256,
                      dtype="bfloat16")
            store.flush()
        done.append(1)

    ts = [threading.Thread(target=worker, args=(keys[i::2],)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=30)
    assert len(done) == 2 and store.lookup(keys[:1]) == 1


def test_eviction_takes_chains_from_the_tail(data_dir: Path, ns: Namespace) -> None:
    """Parents are published (and touched) before their children: eviction must still remove a
    chain's tail first, so the prefix stays reachable."""
    obj = 4096 + 4 * SEG
    keys = chain(ns, 8)
    with Store(data_dir / "root", ns, capacity_bytes=8 * obj, low_watermark=0.6,
               janitor_period=0, orphan_grace=0) as st:
        for i, k in enumerate(keys):
            st.put(k, segs_for(k), parent=keys[i - 1] if i else ns.digest, chunk_index=i,
                   token_count=256, dtype="bfloat16").result()
            time.sleep(0.02)
        rep = st.run_janitor()
        assert rep.evicted >= 3 and rep.orphans == 0
        assert st.lookup(keys) == 8 - rep.evicted


@pytest.mark.parametrize("garbage", ["null", "dir", "text"])
def test_ledger_garbage_never_fails_the_caller(data_dir: Path, ns: Namespace,
                                               garbage: str) -> None:
    root = data_dir / "root"
    meta = root / ".yrcache"
    meta.mkdir(parents=True)
    if garbage == "dir":
        (meta / "usage.json").mkdir()
    else:
        (meta / "usage.json").write_text('{"bytes": null, "added": "x"}' if garbage == "null"
                                         else "not json")
    obj = 4096 + 4 * SEG
    with Store(root, ns, capacity_bytes=64 * obj, janitor_period=0) as st:
        st.usage._flushed_at = -1e9
        assert put_chain(st, chain(ns, 3)) == [True] * 3
        assert st.stats()["usage_estimate_bytes"] >= 0
        assert st.run_janitor().ran


def test_janitor_leaves_other_format_versions_alone(data_dir: Path, ns: Namespace) -> None:
    """Another yrcache version (its own namespace) may share the root: its objects are never
    removed as corrupt or orphaned."""
    from yrcache._native import _C
    from yrcache.store.janitor import _UNREADABLE
    other = make_ns(format_version=2)
    with Store(data_dir / "root", other, janitor_period=0) as st:
        k = chain(other, 1)[0]
        put_chain(st, [k])
        p = Path(st.path_of(k))
    raw = bytearray(p.read_bytes())
    raw[8:12] = (2).to_bytes(4, "little")                   # a version-2 header...
    raw[248:256] = bytes(8)
    raw[248:256] = _C.store.checksum(bytes(raw[:4096])).to_bytes(8, "little")  # ...self-consistent
    p.write_bytes(bytes(raw))
    with Store(data_dir / "root", ns, janitor_period=0, orphan_grace=0) as st:
        rep = st.run_janitor()
        assert rep.corrupt == 0 and p.exists()
        assert st.janitor._parent_of(next(paths.walk_objects(st._state.rootfd))) is _UNREADABLE


def test_fifo_never_blocks_touch_or_header_reads(store: Store) -> None:
    from yrcache._native import _C
    k = chain(store.namespace, 1)[0]
    p = Path(store.path_of(k))
    p.parent.mkdir(parents=True)
    os.mkfifo(p)
    t = time.monotonic()
    assert _C.store.touch_keys(store._state.nsfd, k) >= 0
    with pytest.raises(OSError):   # a FIFO is refused at open (O_NONBLOCK), never waited on
        store.read_header(k)
    assert time.monotonic() - t < 5


def test_bytearray_keys_and_bad_put_args(store: Store) -> None:
    k = chain(store.namespace, 1)[0]
    assert store.put(bytearray(k), segs_for(k), parent=bytearray(store.ns), chunk_index=0,
                     token_count=256, dtype="bfloat16").result()
    assert store.lookup([bytearray(k)]) == 1
    assert store.get(bytearray(k), empty()).result()
    with pytest.raises(ValueError, match="dtype"):
        store.put(k, [b"x"], parent=store.ns, chunk_index=0, token_count=1,
                  dtype="torch.float8_e4m3fnuz")
    with pytest.raises(ValueError, match="shape"):
        store.put(k, [b"x"], parent=store.ns, chunk_index=0, token_count=1, dtype="u8",
                  shape=[1] * 9)
    with pytest.raises(ValueError, match="out of range"):
        store.get(k, [np.zeros(SEG, np.uint8)], layers=[4])


def test_short_fresh_object_is_a_miss_old_one_is_removed(store: Store) -> None:
    """A just-published object that reads short may not be fully visible on this client of a
    shared file system yet: a miss that keeps it. One that stays short is truncated: removed."""
    k = chain(store.namespace, 1, seed=21)[0]
    put_chain(store, [k])
    p = Path(store.path_of(k))
    with open(p, "r+b") as f:
        f.truncate(4096 + SEG)
    r = store.get(k, empty(), lengths=[SEG] * 4).result()
    assert not r and r.reason == "missing" and p.exists() and store.stats()["incomplete"] == 1
    old = time.time() - 3600
    os.utime(p, (old, old))
    r = store.get(k, empty(), lengths=[SEG] * 4).result()
    assert not r and r.reason.startswith("corrupt") and not p.exists()


def test_open_that_raced_a_removal_is_not_kept_open(store: Store) -> None:
    """A load opens an object while a concurrent load of another layer finds it corrupt and
    removes it (then it is stored anew): the first load must not keep its descriptor of the
    removed inode in the open-object cache, or later loads would read the dead object."""
    keys = chain_keys(store.ns, list(range(2 * store.namespace.chunk_tokens)),
                      store.namespace.chunk_tokens)
    assert all(put_chain(store, keys))
    bufs = [np.zeros(SEG, np.uint8) for _ in range(4)]
    gen = store._state.forgets           # the racing load's open happens here ...
    assert store.delete(keys[1])         # ... a concurrent load removes the object ...
    assert store._reader.adopt_handle(keys[1], None, None, 0, gen) is False   # ... not adopted
    store._reader.hit(keys[1], [], None, True, gen)  # ... nor indexed as present
    assert keys[1] not in store._state.index and not store.exists(keys[1])
    assert all(put_chain(store, keys))   # stored anew: loads read the new object
    assert store.get(keys[1], bufs).result(timeout=10)
    assert all(np.array_equal(b, s) for b, s in zip(bufs, segs_for(keys[1])))


def test_read_cache_follows_the_file_system_and_the_environment(
        data_dir: Path, ns: Namespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads use O_DIRECT unless told otherwise (auto: only roots on network file systems read
    through the page cache); read through it, a load returns the same verified bytes and leaves
    the object cached (O_DIRECT leaves nothing)."""
    keys = chain(ns, 2, seed=7)
    monkeypatch.delenv("YRCACHE_READ_CACHE", raising=False)
    with Store(data_dir / "root", ns, janitor_period=0) as st:
        assert (st.network_fs, st.read_cache) == ("", False)
        assert put_chain(st, keys) == [True, True]
        out = empty()
        assert st.get(keys[0], out).result() and all(
            (x == y).all() for x, y in zip(out, segs_for(keys[0])))
        assert resident_bytes(st.path_of(keys[0])) == 0   # written and read with O_DIRECT
    monkeypatch.setenv("YRCACHE_READ_CACHE", "auto")
    with Store(data_dir / "root", ns, janitor_period=0) as st:
        assert st.read_cache is False   # a local file system
    monkeypatch.setenv("YRCACHE_READ_CACHE", "on")
    with Store(data_dir / "root", ns, janitor_period=0) as st:
        assert st.read_cache is True
        out = empty()
        assert st.get(keys[1], out).result() and all(
            (x == y).all() for x, y in zip(out, segs_for(keys[1])))
        path = st.path_of(keys[1])
        assert resident_bytes(path) == os.path.getsize(path)
    with Store(data_dir / "root", ns, janitor_period=0, read_cache=False) as st:
        assert st.read_cache is False   # the argument wins over the environment
    monkeypatch.setenv("YRCACHE_READ_CACHE", "maybe")
    with pytest.raises(ValueError, match="YRCACHE_READ_CACHE"):
        Store(data_dir / "root", ns, janitor_period=0)
    with pytest.raises(TypeError, match="read_cache must be a bool or None"):
        Store(data_dir / "root", ns, janitor_period=0, read_cache=1)  # type: ignore[arg-type]
