# SPDX-License-Identifier: Apache-2.0
"""Bandwidth, ours: publish N objects (store), read them back whole (load) and layer by layer
(load_layer), checksum them (verify), each run paired with fio's (yrcache.bench.store_bench.fio)."""
from __future__ import annotations

import collections
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import yrcache
from yrcache.io.buffers import BufferPool
from yrcache.store.format import checksums
from yrcache.store.keys import chain_keys, fold_extras

from . import fio
from .harness import CHUNK_TOKENS, GB, Bench, Row, Sample, cpu_seconds

CPU_METHOD = ("ours: getrusage(RUSAGE_SELF) ru_utime+ru_stime delta around the timed region (all "
              "threads: store/load pools, engine, Python); fio: (usr_cpu+sys_cpu)/100 * "
              "job_runtime/1000 from its JSON, summed over jobs by --group_reporting")
TIMED = ("store: first put() submitted .. last put() Future done (each put: checksums, header, "
         "O_DIRECT writes, fsync, rename); load/load_layer: first get() submitted .. last get() "
         "done (verification included), at most --load-window gets in flight, each with its own "
         "slab of a registered BufferPool; fio: its own bw_bytes (io_bytes / runtime; "
         "fsync_on_close is inside the runtime). Deleting the previous run's objects/files and "
         "dropping the page cache happen before the timed region")
VERIFY_METHOD = ("yrcache.store.format.checksums (XXH3-64, the store's segment checksum) over the "
                 "segments of N objects held in the load slabs after a whole-object load run, "
                 "one call per object, one thread; fraction = verify time / the same pair's load "
                 "time. Loads verify on --load-threads threads overlapped with I/O, so this is the "
                 "CPU share, an upper bound on the wall-time share")


def measure(fn: Callable[[], None], nbytes: int) -> Sample:
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return Sample(nbytes / dt / GB, cpu / (nbytes / GB), dt)


def keys_for_run(b: Bench, run: int) -> tuple[bytes, list[bytes]]:
    """A fresh chain per run (its root, its keys): every store run publishes new objects."""
    root = fold_extras(b.ns.digest, {"store_bench_run": f"{os.getpid()}-{run}"})
    tokens = np.arange(b.N * CHUNK_TOKENS, dtype=np.uint32) % 128000
    return root, chain_keys(root, tokens, CHUNK_TOKENS)


def store_run(b: Bench) -> Sample:
    st = b.st
    assert st is not None
    for k in b.live_keys:  # the previous run's objects: new objects every run
        st.delete(k)
    parent0, keys = keys_for_run(b, b.runs)
    b.runs += 1
    errors0 = st.stats()["store_errors"]

    def go() -> None:
        futs = [st.put(k, b.segs, parent=keys[i - 1] if i else parent0, chunk_index=i,
                       token_count=CHUNK_TOKENS, dtype="bfloat16", shape=(b.seg // 2,))
                for i, k in enumerate(keys)]
        ok = [f.result() for f in futs]
        if not all(ok):
            raise RuntimeError(f"store: {ok.count(False)} of {len(ok)} puts dropped "
                               f"({st.stats()['errors_by_errno']})")

    s = measure(go, b.run_bytes)
    if st.stats()["store_errors"] != errors0:
        raise RuntimeError(f"store errors: {st.stats()['errors_by_errno']}")
    b.live_keys = keys
    return s


def _windowed(b: Bench, pool: BufferPool, items: list[tuple[bytes, int | None]]) -> None:
    """get() every (key, layer|None) with at most pool.count in flight; a miss is fatal."""
    st = b.st
    assert st is not None
    inflight: collections.deque[tuple[Any, memoryview]] = collections.deque()

    def reap() -> None:
        fut, slab = inflight.popleft()
        r = fut.result()
        if not r:
            raise RuntimeError(f"get {r.key.hex()}: miss ({r.reason})")
        pool.release(slab)

    for key, layer in items:
        slab = pool.acquire()
        while slab is None:
            reap()
            slab = pool.acquire()
        if layer is None:
            bufs = [slab[i * b.seg:(i + 1) * b.seg] for i in range(b.L)]
            fut = st.get(key, bufs, lengths=b.lengths)
        else:
            fut = st.get(key, [slab[:b.seg]], layers=[layer], lengths=b.lengths)
        inflight.append((fut, slab))
    while inflight:
        reap()


def load_run(b: Bench) -> Sample:
    b.drop_cache()
    items: list[tuple[bytes, int | None]] = [(k, None) for k in b.live_keys]
    return measure(lambda: _windowed(b, b.whole_pool, items), b.run_bytes)


def layer_run(b: Bench) -> Sample:
    b.drop_cache()
    items: list[tuple[bytes, int | None]] = [(k, i) for i in range(b.L)
                                             for k in b.live_keys]
    return measure(lambda: _windowed(b, b.layer_pool, items), b.run_bytes)


def verify_run(b: Bench) -> float:
    """Checksums of N objects' segments, from the whole-load slabs (data just loaded)."""
    pool = b.whole_pool
    arena = memoryview(pool.arena)
    views = [arena[j * pool.slab_bytes:j * pool.slab_bytes + b.obj_payload]
             for j in range(pool.count)]
    per = [[v[i * b.seg:(i + 1) * b.seg] for i in range(b.L)] for v in views]
    t0 = time.perf_counter()
    for j in range(b.N):
        checksums(per[j % len(per)])
    return time.perf_counter() - t0


def check_data(b: Bench) -> None:
    """Outside the timed runs: one whole object and one layer must come back as written."""
    st = b.st
    assert st is not None and b.live_keys
    buf = yrcache.HostBuffer(b.obj_payload)
    mv = memoryview(buf)
    mv[:] = bytes(b.obj_payload)
    r = st.get(b.live_keys[0], [mv[i * b.seg:(i + 1) * b.seg]
                                   for i in range(b.L)], lengths=b.lengths).result()
    if not r or not np.array_equal(np.frombuffer(mv, np.uint8),
                                   np.frombuffer(memoryview(b.src), np.uint8)):
        raise RuntimeError(f"data check failed: whole object ({r.reason or 'bytes differ'})")
    i = b.L - 1
    one = mv[:b.seg]
    one[:] = bytes(b.seg)
    r = st.get(b.live_keys[-1], [one], layers=[i], lengths=b.lengths).result()
    if not r or not np.array_equal(np.frombuffer(one, np.uint8),
                                   np.frombuffer(b.segs[i], np.uint8)):
        raise RuntimeError(f"data check failed: layer {i} ({r.reason or 'bytes differ'})")


def run_row(b: Bench, row: Row) -> None:
    ours = {"store": store_run, "load": load_run, "load_layer": layer_run}
    for i in range(b.a.pairs):
        for who in (("ours", "fio") if i % 2 == 0 else ("fio", "ours")):
            if who == "ours":
                b.progress(f"{row.op} yrcache")
                row.ours.append(ours[row.op](b))
                if row.op == "load":
                    t = verify_run(b)
                    b.verify.append(t)
                    b.verify_frac.append(t / row.ours[-1].seconds)
            elif row.fio_cmd is not None:
                b.progress(f"{row.op} fio")
                try:
                    row.fio.append(fio.run(b, row.op, row.fio_cmd))
                except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError,
                        ZeroDivisionError) as e:
                    row.note, row.fio_cmd, row.fio = f"fio failed: {e}", None, []
                    b.note(f"{row.op}: fio failed: {e}")

