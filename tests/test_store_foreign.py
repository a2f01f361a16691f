# SPDX-License-Identifier: Apache-2.0
"""Entries that are not ours under object names (symlinks, directories, FIFOs, objects of another
root): misses, never followed, never blocking. Payloads are derived from the key
(tests/store_util.py), so any process can check any object byte for byte."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from yrcache.store.store import Store

from . import store_util
from .helpers import REPO, run_child


def _plant_outside_object(data_dir: Path, k: bytes) -> tuple[Path, str]:
    """A valid object for key k (same namespace) in a root outside the tested one."""
    outside = data_dir / "outside"
    with store_util.open_store(outside) as o:
        assert store_util.put(o, k).result()
        return outside, o.path_of(k)


def _foreign_entries(data_dir: Path, s: Store) -> dict[str, tuple[bytes, str]]:
    """Plant entries that are not regular files of ours under object names: case -> (key, outside
    path that must stay untouched or '')."""
    out = {}
    # a symlink named like an object, pointing at a valid object outside the root
    k = store_util.make_key("foreign", "symlink")
    _, target = _plant_outside_object(data_dir, k)
    p = Path(s.path_of(k))
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)
    out["symlink_object"] = (k, target)
    # a symlinked shard directory (<ns>/<k[:2]>) leading to a tree with a valid object
    k = store_util.make_key("foreign", "shard")
    _outside, target = _plant_outside_object(data_dir, k)
    shard = Path(s.path_of(k)).parent.parent
    assert not shard.exists()
    os.symlink(Path(target).parent.parent, shard)
    out["symlinked_shard"] = (k, target)
    # a directory in place of an object
    k = store_util.make_key("foreign", "dir")
    p = Path(s.path_of(k))
    p.mkdir(parents=True)
    out["directory"] = (k, "")
    # a relative symlink to a good object inside the root (still not followed)
    k = store_util.make_key("foreign", "inner-symlink")
    good = store_util.make_key("good", 0)
    p = Path(s.path_of(k))
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(s.path_of(good), p.parent), p)
    out["inner_symlink"] = (k, s.path_of(good))
    # a hard link to an object stored under another key: a regular file, wrong key inside
    k = store_util.make_key("foreign", "hardlink")
    p = Path(s.path_of(k))
    p.parent.mkdir(parents=True, exist_ok=True)
    os.link(s.path_of(store_util.make_key("good", 1)), p)
    out["hardlink_other_key"] = (k, s.path_of(store_util.make_key("good", 1)))
    return out


def test_foreign_entries_are_misses_and_never_followed(data_dir):
    root = data_dir / "root"
    with store_util.open_store(root) as s:
        good = [store_util.make_key("good", i) for i in range(4)]
        assert all(store_util.put(s, k).result() for k in good)
        planted = _foreign_entries(data_dir, s)
        targets = {c: (Path(t).read_bytes() if t else b"") for c, (_, t) in planted.items()}
        for case, (k, target) in planted.items():
            for use_lengths in (False, True):
                r, data_ok = store_util.check_get(s, k, use_lengths=use_lengths)
                assert not r.ok, (case, "data of a foreign entry was returned")
                assert data_ok is None
                assert r.reason.startswith(store_util.OK_MISS + ("error:",)), (case, r.reason)
            assert not s.verify(k).ok, case
            assert s.lookup([k]) in (0, 1)
            # what the entry pointed at is untouched (never followed for removal either)
            if target:
                assert Path(target).read_bytes() == targets[case], case
            assert os.path.lexists(target) if target else True
            r, ok = store_util.check_get(s, good[0])
            assert r.ok and ok
        # the hard link (a regular file with another key inside) was removed as corrupt; the
        # others are not regular files: walk_objects reports none of them as objects
        assert not os.path.lexists(s.path_of(planted["hardlink_other_key"][0]))
        assert {bytes.fromhex(o.key_hex) for o in store_util.walk(root)} == set(good)
        # a good object can still be published over the planted file-level entries
        for case in ("symlink_object", "inner_symlink", "hardlink_other_key"):
            k = planted[case][0]
            assert store_util.put(s, k, dedup=False).result(), case
            r, ok = store_util.check_get(s, k)
            assert r.ok and ok, (case, r.reason)
        for g in good:
            assert s.verify(g).ok


def test_foreign_entry_miss_reason_is_corrupt_or_missing(data_dir):
    with store_util.open_store(data_dir / "root") as s:
        assert all(store_util.put(s, store_util.make_key("good", i)).result() for i in range(2))
        planted = _foreign_entries(data_dir, s)
        bad = {}
        for case, (k, _) in planted.items():
            r, _ = store_util.check_get(s, k)
            if not r.reason.startswith(store_util.OK_MISS):
                bad[case] = r.reason
        assert not bad, bad


def test_symlinked_shard_is_never_read_through(data_dir):
    """Lookup is a one-fstatat existence hint (docs/store.md): through a symlinked shard it may
    claim an object, but no byte is ever read through the link, and a put cannot write through
    it either."""
    with store_util.open_store(data_dir / "root", index_ttl=0) as s:
        k = store_util.make_key("foreign", "shard")
        _, target = _plant_outside_object(data_dir, k)
        before = Path(target).read_bytes()
        shard = Path(s.path_of(k)).parent.parent
        os.symlink(Path(target).parent.parent, shard)
        assert s.lookup([k]) in (0, 1)
        for _ in range(2):
            r, _ = store_util.check_get(s, k)
            assert not r.ok and r.reason.startswith("corrupt")
        put = s.put(k, store_util.segments(k), **store_util.put_kwargs(k), dedup=False)
        assert not put.result()
        assert Path(target).read_bytes() == before


@pytest.mark.slow
def test_fifo_named_like_an_object_does_not_block(data_dir):
    code = f"""
import os, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
import store_util
from yrcache.store.store import Store
s = Store({str(data_dir / 'root')!r}, store_util.namespace(), janitor_period=0)
k = store_util.make_key("fifo")
assert store_util.put(s, k).result()
p = s.path_of(k); os.unlink(p); os.mkfifo(p)
r, ok = store_util.check_get(s, k)
print("GET", r.ok, r.reason, flush=True)
print("VERIFY", s.verify(k).ok, flush=True)
os._exit(0)
"""
    try:
        p = run_child(code, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("get() of a FIFO named like an object did not return within 10 s")
    assert p.returncode == 0, p.stderr
    assert "GET False" in p.stdout and "VERIFY False" in p.stdout


def test_object_with_other_geometry_is_a_miss_not_an_exception(data_dir):
    with store_util.open_store(data_dir / "root") as s:
        k = store_util.make_key("geometry")
        # same segment count, other lengths
        other = [np.ones(100, np.uint8)] * len(store_util.geometry(k))
        assert s.put(k, other, **store_util.put_kwargs(k)).result()
        rr = s.get(k, [np.zeros(50, np.uint8)], layers=[0], byte_range=(0, 50)).result()
        assert rr.ok  # 50 bytes of a 100-byte segment: fine
        bufs = [np.zeros(n, np.uint8) for n in store_util.geometry(k)]
        r = s.get(k, bufs).result(timeout=30)
        assert not r.ok and r.reason.startswith("mismatch")  # not what this caller expects,
        assert os.path.exists(s.path_of(k))                   # but valid: it stays
        r = s.get(k, bufs, lengths=store_util.geometry(k)).result(timeout=30)
        assert not r.ok and r.reason.startswith("corrupt")   # not the namespace's geometry
        assert not os.path.exists(s.path_of(k))              # so it is removed
