# SPDX-License-Identifier: Apache-2.0
"""ENOSPC on a small real file system: puts are dropped and counted, never raised, and the root
stays consistent. Payloads are derived from the key (tests/store_util.py), so any process can
check any object byte for byte."""
from __future__ import annotations

import os

import numpy as np

from yrcache.store import paths

from . import store_util


def test_enospc_on_small_tmpfs(small_tmpfs):
    root = small_tmpfs / "root"
    s = store_util.open_store(root)
    # The usage ledger is flushed at most once a second; a flush on a completely full file system
    # raises out of put() (see test_put_result_is_bool_when_the_ledger_flush_hits_enospc). Keep
    # this test about the data path and deterministic: no ledger flushes after the first.
    s.usage.refresh_s = float("inf")
    try:
        stored: list[bytes] = []
        failed: list[bytes] = []
        i = 0
        # fill until stores fail, then keep trying (smaller objects may still fit now and then)
        while len(failed) < 12 and i < 400:
            batch = [store_util.make_key("enospc", j) for j in range(i, i + 4)]  # 4 puts in flight
            i += 4
            futs = [store_util.put(s, k) for k in batch]
            for k, fut in zip(batch, futs):
                ok = fut.result(timeout=60)
                assert isinstance(ok, bool)
                (stored if ok else failed).append(k)
            assert store_util.tmp_files(root) == [], "a failed store left its temp file"
            for k, fut in zip(batch, futs):
                if not fut.result():
                    assert not os.path.lexists(s.path_of(k))
                    assert s.lookup([k]) == 0
        assert failed, "the 1 MiB file system never filled up"
        assert len(stored) >= 3
        st_ = s.stats()
        assert st_["errors_by_errno"].get("ENOSPC", 0) >= 1
        assert st_["store_errors"] == len(failed)
        assert st_["objects_stored"] == len(stored)
        # while full: everything stored earlier reads back exactly; nothing partial exists
        objs = store_util.walk(root)
        assert {bytes.fromhex(o.key_hex) for o in objs} == set(stored)
        for o in objs:
            assert o.size == store_util.object_bytes(bytes.fromhex(o.key_hex))
        for k in stored:
            r, ok = store_util.check_get(s, k)
            assert r.ok and ok, (k.hex(), r.reason)
            assert s.verify(k).ok
        # still full: one more store larger than any that failed fails cleanly
        big = store_util.make_key("enospc-big")
        bigseg = store_util.payload(big, 0, 300_000)
        assert s.put(big, [bigseg], **store_util.put_kwargs(big)).result() is False
        assert store_util.tmp_files(root) == [] and not os.path.lexists(s.path_of(big))
        # free space: stores work again
        again = [store_util.make_key("enospc-again", j) for j in range(4)]
        need = sum(store_util.object_bytes(k) for k in again + failed[:1]) + (64 << 10)
        freed, gone = 0, []
        for k in stored:
            if freed >= need:
                break
            freed += store_util.object_bytes(k)
            assert s.delete(k)
            gone.append(k)
        assert freed >= need
        assert all(store_util.put(s, k).result() for k in again)
        for k in again + [k for k in stored if k not in gone]:
            r, ok = store_util.check_get(s, k)
            assert r.ok and ok
        # and a previously failed key now stores fine
        assert store_util.put(s, failed[0]).result()
        r, ok = store_util.check_get(s, failed[0])
        assert r.ok and ok
        assert store_util.tmp_files(root) == []
    finally:
        s.close()


def test_put_result_is_bool_when_the_ledger_flush_hits_enospc(small_tmpfs):
    root = small_tmpfs / "root"
    with store_util.open_store(root) as s:
        k0 = store_util.make_key("ledger", 0)
        s.usage._flushed_at = -1e9  # a ledger flush is due (as it is a second after the last)
        assert store_util.put(s, k0).result()  # the first publish writes usage.json
        free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
        with open(small_tmpfs / "filler", "wb") as f:  # leave room for exactly one 8 KiB object
            f.write(bytes(free - 8192))
        s.usage._flushed_at = -1e9  # the next flush is due, and will hit ENOSPC
        k = store_util.make_key("ledger", 1)
        fut = s.put(k, [np.ones(100, np.uint8)], **store_util.put_kwargs(k))
        ok = fut.result(timeout=60)  # raises OSError(ENOSPC) today
        assert ok is True and s.verify(k).ok
        assert sorted(os.listdir(root / paths.META_DIR)) == ["usage.json", "usage.lock"]
