# SPDX-License-Identifier: Apache-2.0
"""What the phases share: sizes and targets, the sample types, CPU time, the page-cache drop and
the run's state (``Bench``: options, temp dir, engine, stores, buffers, notes, progress)."""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import yrcache
from yrcache.io.buffers import BufferPool
from yrcache.store.keys import Namespace
from yrcache.store.store import Store

from ..common import Progress, summarize

GB = 1e9
MIB = 1 << 20
OPS = ("store", "load", "load_layer", "lookup", "metaops")
TARGET_RATIO = 0.9              # store and load >= 0.9x fio (local file system)
NETWORK_FS = ("fuse", "nfs", "nfs4", "cifs", "smb3", "ceph", "lustre", "gpfs", "9p", "glusterfs",
              "beegfs", "moosefs")
CHUNK_TOKENS = 256


@dataclass
class Sample:
    gbps: float
    cpu_s_per_gb: float
    seconds: float


@dataclass
class Row:
    op: str
    ours: list[Sample] = field(default_factory=list)
    fio: list[Sample] = field(default_factory=list)
    fio_cmd: list[str] | None = None
    note: str | None = None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def is_network_fs(fstype: str) -> bool:
    return fstype.split(".")[0] in NETWORK_FS or fstype.startswith("fuse")


def lat_summary(secs: list[float]) -> dict[str, Any] | None:
    if not secs:
        return None
    return summarize([x * 1e3 for x in secs], digits=4, median_ms="median", p90_ms="p90",
                     min_ms="min", max_ms="max", n="n", samples_ms="samples")


def drop_caches() -> str | None:
    """sync, then drop the page cache, dentries and inodes; None on success, else why not."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as fh:
            fh.write("3\n")
        return None
    except OSError as e:
        return f"cannot drop the page cache ({e.strerror or e}; needs root)"


class Bench:
    """What the phases share: the options, the temp dir, the engine and stores, the buffers,
    notes, progress and the page-cache dropping."""

    def __init__(self, a: argparse.Namespace, fio: str | None, notes: list[str]) -> None:
        self.a = a
        self.fio = fio
        self.notes = notes
        self.N, self.L, self.seg = a.objects, a.layers, a.segment_bytes
        self.obj_payload = self.L * self.seg
        self.lengths = [self.seg] * self.L
        self.run_bytes = self.N * self.obj_payload
        # fio's request size for store/load: 1 MiB (the engine's chunk) when it divides a file
        self.fio_bs = MIB if self.obj_payload % MIB == 0 else self.seg
        self.root = tempfile.mkdtemp(prefix=".yrcache_store_bench_", dir=a.dir)
        self.fio_dir = os.path.join(self.root, "fio")
        os.mkdir(self.fio_dir)
        self.drop = not a.no_drop_caches
        self.drop_reason: str | None = None
        self._progress = Progress(0)
        self.eng: yrcache.IoEngine | None = None
        self.st: Store | None = None
        self.lk: Store | None = None
        self.ns = Namespace(model="yrcache-store-bench/8b-class", dtype="bfloat16",
                            num_layers=self.L, kv_heads=8, head_size=128, layout="store-bench",
                            chunk_tokens=CHUNK_TOKENS)
        self.lookup_ns = Namespace(model="yrcache-store-bench/lookup", dtype="bfloat16",
                                   num_layers=1, kv_heads=8, head_size=128,
                                   layout="store-bench-lookup", chunk_tokens=CHUNK_TOKENS)
        self.live_keys: list[bytes] = []  # the objects of the last store run (what loads read)
        self.runs = 0
        self.fio_files = False
        self.verify: list[float] = []       # seconds, one per load run
        self.verify_frac: list[float] = []  # each over the same pair's load time

    def open(self) -> None:
        a = self.a
        self.eng = yrcache.IoEngine(a.backend, queue_depth=a.qd)
        self.src = self.eng.alloc(self.obj_payload)
        mv = memoryview(self.src)
        for off in range(0, self.obj_payload, 16 * MIB):  # random, generated once
            n = min(16 * MIB, self.obj_payload - off)
            mv[off:off + n] = os.urandom(n)
        self.segs = [mv[i * self.seg:(i + 1) * self.seg] for i in range(self.L)]
        self.st = Store(self.root, self.ns, engine=self.eng, janitor_period=0,
                        store_threads=a.store_threads, load_threads=a.load_threads)
        self.whole_pool = BufferPool(self.obj_payload, a.load_window, self.eng)
        self.layer_pool = BufferPool(self.seg, a.load_window, self.eng)

    def close(self) -> None:
        for s in (self.st, self.lk):
            if s is not None:
                s.close()
        if self.eng is not None:
            self.eng.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def drop_cache(self) -> None:
        if not self.drop:
            return
        why = drop_caches()
        if why is not None:
            self.drop, self.drop_reason = False, why
            self.note(f"page cache not dropped before read runs: {why}")

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        print(f"{chr(10) if sys.stderr.isatty() else ''}note: {msg}", file=sys.stderr)

    def progress(self, what: str) -> None:
        self._progress(what)
