# SPDX-License-Identifier: Apache-2.0
"""Injected I/O errors: a failing write leaves nothing, transient faults are invisible, a failing
read is an error miss. Payloads are derived from the key (tests/store_util.py), so any process
can check any object byte for byte."""
from __future__ import annotations

import errno
import os

import pytest

import yrcache

from . import store_util


def _fault_engine(backend: str) -> yrcache.IoEngine:
    # 64 KiB pieces, depth 1: a 4-segment object is several kernel writes in a fixed order.
    return yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=1 << 16, max_inflight_bytes=1 << 16)


def _big_key(tag: str) -> bytes:
    j = 0
    while True:
        k = store_util.make_key("faults", tag, j)
        if len(store_util.geometry(k)) == 4 and sum(store_util.geometry(k)) > 3 * 4096:
            return k
        j += 1


WRITE_FAULTS = [("write:eio@1", "EIO"), ("write:enospc@2", "ENOSPC"), ("write:eio@1+", "EIO"),
                ("write:enospc@3+", "ENOSPC"), ("fsync:eio@1", "EIO"), ("fsync:enospc@1", "ENOSPC"),
                ("any:eio@2", "EIO")]


@pytest.mark.parametrize(("spec", "name"), WRITE_FAULTS)
def test_failing_write_leaves_nothing(backend, data_dir, spec, name):
    root = data_dir / "root"
    eng = _fault_engine(backend)
    try:
        s = store_util.open_store(root, engine=eng)
        try:
            k = _big_key("w")
            old = _big_key("old")
            assert store_util.put(s, old).result()
            eng._inject_faults(spec)
            assert store_util.put(s, k).result(timeout=60) is False
            # An overwrite (dedup=False) of an existing object that fails leaves the old one valid.
            eng._inject_faults(spec)
            assert store_util.put(s, old, dedup=False).result(timeout=60) is False
            eng._inject_faults("")
            assert s.lookup([k]) == 0
            assert not os.path.lexists(s.path_of(k))
            assert store_util.tmp_files(root) == []
            st_ = s.stats()
            assert st_["store_errors"] == 2
            assert st_["errors_by_errno"] == {name: 2}
            assert st_["objects_stored"] == 1
            r, ok = store_util.check_get(s, k)
            assert not r.ok and r.reason == "missing"
            r, ok = store_util.check_get(s, old)
            assert r.ok and ok
            # a fresh store (no in-process index) agrees
            with store_util.open_store(root) as s2:
                assert s2.lookup([k]) == 0 and s2.lookup([old]) == 1
                assert s2.verify(old).ok
            # faults cleared: everything works again
            assert store_util.put(s, k).result()
            r, ok = store_util.check_get(s, k)
            assert r.ok and ok
            assert store_util.read_object_file(s.path_of(k), k)
            assert store_util.tmp_files(root) == []
        finally:
            s.close()
    finally:
        eng.close()


@pytest.mark.parametrize("spec", ["write:short@1+", "write:short@2,read:short@1+", "any:eintr@2",
                                  "write:eagain@1", "fsync:eintr@1"])
def test_transient_faults_are_invisible_to_put_and_get(backend, data_dir, spec):
    eng = _fault_engine(backend)
    try:
        with store_util.open_store(data_dir / "root", engine=eng) as s:
            eng._inject_faults(spec)
            keys = [_big_key(f"t{i}") for i in range(3)]
            futs = [store_util.put(s, k) for k in keys]
            results = [f.result(timeout=60) for f in futs]
            assert all(results), results
            for k in keys:
                r, ok = store_util.check_get(s, k, use_lengths=True)
                assert r.ok and ok, r.reason
                r, ok = store_util.check_get(s, k)
                assert r.ok and ok, r.reason
            eng._inject_faults("")
            assert s.stats()["store_errors"] == 0 and s.stats()["errors_by_errno"] == {}
            for k in keys:
                assert store_util.read_object_file(s.path_of(k), k)
            assert store_util.tmp_files(data_dir / "root") == []
    finally:
        eng.close()


@pytest.mark.parametrize("spec", ["read:eio@1", "read:eio@2", "read:eio@1+", "read:5@3",
                                  "read:enospc@1"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["header_first", "speculative"])
def test_failing_read_is_an_error_miss(backend, data_dir, spec, use_lengths):
    eng = _fault_engine(backend)
    try:
        with store_util.open_store(data_dir / "root", engine=eng) as s:
            k = _big_key("r")
            assert store_util.put(s, k).result()
            eng._inject_faults(spec)
            r, data_ok = store_util.check_get(s, k, use_lengths=use_lengths)
            eng._inject_faults("")
            name = "ENOSPC" if "enospc" in spec else "EIO"
            assert not r.ok and data_ok is None
            assert r.reason.startswith("error: "), r.reason
            assert f"[Errno {getattr(errno, name)}]" in r.reason, r.reason
            st_ = s.stats()
            assert st_["errors_by_errno"] == {name: 1}
            assert st_["misses"] == 1 and st_["corrupt"] == 0 and st_["hits"] == 0
            # an I/O error is not corruption: the object is kept, and reads work again
            assert os.path.exists(s.path_of(k))
            r, ok = store_util.check_get(s, k, use_lengths=use_lengths)
            assert r.ok and ok, r.reason
            assert s.verify(k).ok
            assert s.stats()["hits"] == 1  # verify() is a tool: it counts nothing
    finally:
        eng.close()
