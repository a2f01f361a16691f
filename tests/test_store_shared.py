# SPDX-License-Identifier: Apache-2.0
"""The object store on a real distributed file system (MooseFS mounted twice: two "nodes").
Races and crash safety on it are in test_store_moosefs.py."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from yrcache.store import paths
from yrcache.store.store import Store

from .helpers import REPO, resident_bytes, run_child
from .test_store import SEG, chain, empty, make_ns, put_chain, segs_for


def _tree_bytes(root: Path) -> int:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return sum(o.size for o in paths.walk_objects(fd))
    finally:
        os.close(fd)


def test_published_on_a_found_and_verified_on_b(shared_dirs: tuple[Path, Path]) -> None:
    a, b = shared_dirs
    ns = make_ns()
    keys = chain(ns, 12)
    with Store(a / "root", ns, janitor_period=0) as sa:
        assert put_chain(sa, keys) == [True] * 12
    # a store started later, on the other node, sees everything: the file system is the index
    code = f"""
import json
from tests.test_store import make_ns, chain, empty, segs_for, SEG
from yrcache.store.store import Store
ns = make_ns()
keys = chain(ns, 12)
with Store({str(b / 'root')!r}, ns, janitor_period=0) as st:
    n = st.lookup(keys)
    ok = 0
    for k in keys:
        out = empty()
        r = st.get(k, out, lengths=[SEG] * 4).result()
        ok += bool(r) and all((x == y).all() for x, y in zip(out, segs_for(k)))
    print(json.dumps([n, ok, st.stats()["corrupt"]]))
"""
    out = run_child(code, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [12, 12, 0]


def test_per_layer_reads_across_mounts(shared_dirs: tuple[Path, Path]) -> None:
    a, b = shared_dirs
    ns = make_ns()
    keys = chain(ns, 4, seed=3)
    with Store(a / "root", ns, janitor_period=0) as sa, \
            Store(b / "root", ns, janitor_period=0) as sb:
        put_chain(sa, keys)
        deadline = time.monotonic() + 5
        while sb.lookup(keys) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sb.lookup(keys) == 4
        for layer in range(4):
            outs = [np.zeros(SEG, np.uint8) for _ in keys]
            futs = [sb.get(k, [o], layers=[layer], lengths=[SEG] * 4) for k, o in zip(keys, outs)]
            assert all(f.result() for f in futs)
            assert all((o == segs_for(k)[layer]).all() for k, o in zip(keys, outs))
        # each object was opened and its header checked once, then read layer by layer
        assert sb.stats()["open_handle_hits"] == 3 * len(keys)
        # eviction on A: B's open descriptor still reads the whole, valid object (or a miss);
        # a reader without it sees a clean miss
        os.unlink(sa.path_of(keys[3]))
        out = empty()
        r = sb.get(keys[3], out, lengths=[SEG] * 4).result()
        assert not r or all((x == y).all() for x, y in zip(out, segs_for(keys[3])))
        with Store(b / "root", ns, janitor_period=0) as fresh:
            r = fresh.get(keys[3], empty(), lengths=[SEG] * 4).result()
            assert not r and r.reason == "missing"



def test_loads_on_a_shared_fs_read_through_the_client_page_cache(
        shared_dirs: tuple[Path, Path], shared_fs: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With YRCACHE_READ_CACHE=auto loads from a FUSE file system read through the page cache:
    node B keeps what it read (on MooseFS the next load of it costs no FUSE round trip and no
    daemon CPU; a GlusterFS mount with --fopen-keep-cache=off, as CI's, drops a file's pages at
    each open). Bytes changed on node A afterwards never come back as KV: B returns the verified
    object or a miss."""
    a, b = shared_dirs
    ns = make_ns()
    keys = chain(ns, 3, seed=11)
    monkeypatch.delenv("YRCACHE_READ_CACHE", raising=False)
    with Store(a / "root", ns, janitor_period=0) as sa:
        assert put_chain(sa, keys) == [True] * 3
        direct = Store(b / "root", ns, janitor_period=0)   # the default: O_DIRECT
        monkeypatch.setenv("YRCACHE_READ_CACHE", "auto")
        with Store(b / "root", ns, janitor_period=0) as sb, direct:
            assert (sb.network_fs, sb.read_cache, direct.read_cache) == ("fuse", True, False)
            deadline = time.monotonic() + 5
            while sb.lookup(keys) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            for st, k in ((sb, keys[0]), (direct, keys[1])):
                out = empty()
                assert st.get(k, out, lengths=[SEG] * 4).result()
                assert all((x == y).all() for x, y in zip(out, segs_for(k)))
            path0, path1 = sb.path_of(keys[0]), sb.path_of(keys[1])
            if shared_fs == "moosefs":   # fincore's own open keeps the pages (mfscachemode=AUTO)
                assert resident_bytes(path0) == os.path.getsize(path0)
            assert resident_bytes(path1) == 0
            # node A rewrites a segment of the object B holds in its page cache (in place: a
            # bad writer or a bit flip); B, in a new store (no open descriptor), must return the
            # object as published or a miss, never the new bytes
            seg0 = sb.read_header(keys[0]).segment(0)[0]
            with open(sa.path_of(keys[0]), "r+b") as fh:
                fh.seek(seg0)
                fh.write(os.urandom(4096))
            time.sleep(1.2)   # past the client's attribute cache (mfsattrcacheto=1 s)
        with Store(b / "root", ns, janitor_period=0, read_cache=True) as sb2:
            out = empty()
            r = sb2.get(keys[0], out, lengths=[SEG] * 4).result()
            assert not r or all((x == y).all() for x, y in zip(out, segs_for(keys[0])))


_WRITER = """
import sys, time
from tests.test_store import make_ns, chain, put_chain
from yrcache.store.store import Store
root, seed0, n, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ns = make_ns()
with Store(root, ns, capacity_bytes=cap, janitor_period=0.3, store_threads=2) as st:
    for i in range(n):
        put_chain(st, [chain(ns, 1, seed=seed0 + i)[0]])
    st.flush()
    print(st.stats()["dropped_full"], st.stats()["evictions"])
"""


def test_capacity_holds_with_janitors_on_both_mounts(shared_dirs: tuple[Path, Path]) -> None:
    """Two writer processes, one per mount, each with its own janitor, share one budget."""
    import subprocess
    import sys

    a, b = shared_dirs
    obj = 4096 + 4 * SEG
    cap = 16 * obj
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(d / "root"), str(seed), "40",
                               str(cap)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for d, seed in ((a, 1000), (b, 5000))]
    peak = 0
    while any(p.poll() is None for p in procs):
        if (a / "root").is_dir():
            peak = max(peak, _tree_bytes(a / "root"))
        time.sleep(0.05)
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    # The bound: budget + bytes in flight (2 writers x 2 store threads) + each writer's unflushed
    # ledger batch (capacity/64).
    slack = 2 * 2 * obj + 2 * (cap // 64)
    assert peak <= cap + slack, (peak, cap, slack)
    dropped = sum(int(o[0].split()[0]) for o in outs)
    assert dropped > 0                                  # 80 objects cannot fit in 16
    # after writes stop, a janitor pass brings usage under the low watermark
    with Store(b / "root", make_ns(), capacity_bytes=cap, janitor_period=0) as st:
        st.run_janitor()
    assert _tree_bytes(a / "root") <= cap * 0.85
