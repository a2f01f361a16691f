# SPDX-License-Identifier: Apache-2.0
"""Loads never queue behind background stores in the I/O engine: queued reads are issued before
queued writes, writes hold only a share of the slots, each lane stays FIFO, and close(cancel=True)
still drains both lanes. Also the `delay<ms>` fault that stands in for a slow file system.

Orders are observed through the completion queue (callbacks="manual": run_callbacks finishes
futures in the order the engine completed them), never through timing thresholds."""
from __future__ import annotations

import re
import time
from collections.abc import Callable

import numpy as np
import pytest

import yrcache

MiB = 1 << 20


def make(backend: str, **kw) -> yrcache.IoEngine:
    return yrcache.IoEngine(backend, callbacks="manual", **kw)


def record(order: list[str], name: str, fut: yrcache.Future) -> None:
    fut.add_done_callback(lambda _: order.append(name))


def drain(eng: yrcache.IoEngine, order: list[str], n: int, timeout: float = 60) -> None:
    """Run callbacks until n futures have reported (in completion order)."""
    deadline = time.monotonic() + timeout
    while len(order) < n:
        assert time.monotonic() < deadline, f"only {len(order)} of {n} completed: {order}"
        eng.run_callbacks()
        time.sleep(0.001)


def issue_first(eng: yrcache.IoEngine, submit: Callable[[], yrcache.Future]) -> yrcache.Future:
    """Submit one single-piece op and wait until the backend has issued it (a psync worker may
    not have woken yet: ops queued meanwhile would be ordered against it by the lanes)."""
    tasks = eng.stats()["tasks"]
    fut = submit()
    deadline = time.monotonic() + 30
    while eng.stats()["tasks"] == tasks:
        assert time.monotonic() < deadline, "the first op was never issued"
        time.sleep(0.001)
    return fut


def test_read_overtakes_burst_of_writes(backend, data_dir):
    """32 stalled 1 MiB writes queued first; a read submitted behind them completes before most."""
    with make(backend, queue_depth=8, chunk_bytes=MiB, max_inflight_bytes=16 * MiB) as eng, \
            eng.open(data_dir / "src.bin", "w+") as src, eng.open(data_dir / "dst.bin", "w") as dst:
        data = eng.alloc(MiB)
        np.frombuffer(data, np.uint8)[:] = 7
        assert eng.pwrite(src, data, 0).result(timeout=30) == MiB
        eng._inject_faults("write:delay20@1+")
        order: list[str] = []
        for i in range(32):
            record(order, f"w{i}", eng.pwrite(dst, data, i * MiB))
        out = eng.alloc(MiB)
        rd = eng.pread(src, out, 0)
        record(order, "r", rd)
        drain(eng, order, 33)
        assert rd.result(0) == MiB and bytes(out) == bytes(data)
        # FIFO: all 32 writes queued first would finish before the read; with the read lane it
        # waits for at most the writes already in flight (6 of 8 slots; 20 ms each).
        assert order.index("r") < 16, order
        assert eng.stats()["reads_ahead"] >= 1


def test_lanes_keep_fifo_order(backend, data_dir):
    """queue_depth=1: the first write stalls while the rest queue; then every queued read goes
    before the queued writes, reads in submission order, writes in submission order."""
    piece = 64 << 10
    with make(backend, queue_depth=1, chunk_bytes=piece, max_inflight_bytes=piece) as eng, \
            eng.open(data_dir / "f.bin", "w+") as f:
        data = eng.alloc(8 * piece)
        np.frombuffer(data, np.uint8)[:] = np.arange(8 * piece, dtype=np.uint64).astype(np.uint8)
        assert eng.pwrite(f, data, 0).result(timeout=30) == 8 * piece
        eng._inject_faults("write:delay300@1")  # only the first write stalls
        order: list[str] = []
        mv = memoryview(data)
        outs = [bytearray(piece) for _ in range(8)]
        record(order, "w0", issue_first(eng, lambda: eng.pwrite(f, mv[:piece], 8 * piece)))
        for i in range(8):  # interleaved: a write, then a read, ...
            if i:
                record(order, f"w{i}", eng.pwrite(f, mv[i * piece:(i + 1) * piece],
                                                  (8 + i) * piece))
            record(order, f"r{i}", eng.pread(f, outs[i], i * piece))
        drain(eng, order, 16)
        assert order == ["w0"] + [f"r{i}" for i in range(8)] + [f"w{i}" for i in range(1, 8)]
        for i, out in enumerate(outs):
            assert out == mv[i * piece:(i + 1) * piece]
        assert eng.stats()["reads_ahead"] == 8  # every read went while writes waited


@pytest.mark.parametrize("bad", ["read:delay@1", "read:delay0@1", "read:delay600001@1",
                                 "read:delayx@1", "read:delay-5@1", "write:delay1234567@2+",
                                 "read:delay20"])
def test_delay_spec_errors_name_the_spec(engine, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        engine._inject_faults(bad)


def test_delay_delays_and_keeps_the_result(backend, data_dir):
    with make(backend, queue_depth=2) as eng, eng.open(data_dir / "d.bin", "w+") as f:
        eng._inject_faults("read:delay1@1,any:delay600000@100+")  # the bounds are accepted
        data = np.arange(256 << 10, dtype=np.uint8)
        assert eng.pwrite(f, data, 0).result(timeout=30) == data.size
        eng._inject_faults("read:delay50@1+")
        out = np.zeros_like(data)
        t0 = time.monotonic()
        assert eng.pread(f, out, 0).result(timeout=30) == data.size
        assert time.monotonic() - t0 >= 0.04
        np.testing.assert_array_equal(out, data)
        eng._inject_faults("read:delay20@1+,read:eio@1")  # an error rule still applies
        with pytest.raises(OSError):
            eng.pread(f, out, 0).result(timeout=30)


def test_close_cancel_drains_both_lanes(backend, data_dir):
    with make(backend, queue_depth=1, chunk_bytes=64 << 10, max_inflight_bytes=64 << 10) as eng:
        f = eng.open(data_dir / "c.bin", "w+")
        data = np.ones(64 << 10, np.uint8)
        assert eng.pwrite(f, data, 0).result(timeout=30) == data.size
        eng._inject_faults("write:delay200@1")  # the first write holds the only slot
        first = issue_first(eng, lambda: eng.pwrite(f, data, 0))
        futs = []
        for i in range(8):
            futs.append(eng.pwrite(f, data, (i + 1) * data.size))
            futs.append(eng.pread(f, np.zeros_like(data), 0))
        eng.close(cancel=True)
        assert first.result(0) == data.size  # issued work finishes normally
        assert all(fu.done() for fu in futs)
        assert all(isinstance(fu.exception(), yrcache.CancelledError) for fu in futs)
        assert eng._c.inflight() == 0
        f.close()


@pytest.mark.parametrize(("reads_per_file", "how"), [(None, ""), ("0", "env"), ("0", "arg")])
def test_reads_spread_over_files(backend, data_dir, monkeypatch, reads_per_file, how):
    """A whole-file read queued first takes at most 2 of the 8 slots while another file's read
    waits: that read is issued third and completes before the big one (on a FUSE file system,
    reads spread over files are served much faster than the same number on one file).
    YRCACHE_READS_PER_FILE=0 (or IoEngine(reads_per_file=0)) restores plain FIFO: the small read
    is issued after all 16 pieces."""
    kw = {}
    if how == "env":
        monkeypatch.setenv("YRCACHE_READS_PER_FILE", reads_per_file)
    elif how == "arg":
        monkeypatch.setenv("YRCACHE_READS_PER_FILE", "2")   # the argument wins
        kw["reads_per_file"] = int(reads_per_file)
    with make(backend, queue_depth=8, chunk_bytes=MiB, max_inflight_bytes=64 * MiB, **kw) as eng, \
            eng.open(data_dir / "a.bin", "w+") as a, eng.open(data_dir / "b.bin", "w+") as b:
        data = eng.alloc(16 * MiB)
        np.frombuffer(data, np.uint8)[:] = np.arange(16 * MiB, dtype=np.uint64).astype(np.uint8)
        assert eng.pwrite(a, data, 0).result(timeout=30) == 16 * MiB
        assert eng.pwrite(b, memoryview(data)[:MiB], 0).result(timeout=30) == MiB
        eng._inject_faults("read:delay30@1+")
        order: list[str] = []
        big, small = eng.alloc(16 * MiB), eng.alloc(MiB)
        tasks = eng.stats()["tasks"]
        record(order, "a", eng.pread(a, big, 0))
        record(order, "b", eng.pread(b, small, 0))
        drain(eng, order, 2)
        assert bytes(big) == bytes(data) and bytes(small) == bytes(memoryview(data)[:MiB])
        assert eng.stats()["tasks"] - tasks == 17
        if reads_per_file is None:
            assert order == ["b", "a"]
        elif backend == "uring":   # psync workers may finish the last piece of a after b
            assert order == ["a", "b"]


@pytest.mark.parametrize(("value", "exc", "match"), [
    ("two", ValueError, r"YRCACHE_READS_PER_FILE='two' is invalid"),
    ("-1", ValueError, r"reads_per_file must be in \[0, 4096\]"),
])
def test_reads_per_file_invalid(monkeypatch, value, exc, match):
    """A bad YRCACHE_READS_PER_FILE is an error naming it, not a silent FIFO."""
    monkeypatch.setenv("YRCACHE_READS_PER_FILE", value)
    with pytest.raises(exc, match=match):
        yrcache.IoEngine("psync")
