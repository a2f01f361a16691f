# SPDX-License-Identifier: Apache-2.0
"""The command line: options and their checks, the notes on the setup, the run of the chosen ops
(bandwidth pairs, then lookups), the report, the JSON and the plot."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any

from yrcache.store.format import segment_offsets

from ...envs import parse_size
from ..common import Notes, fs_of, sysinfo, usable_dir
from . import __doc__ as package_doc
from . import bandwidth, metaops, report
from .fio import FIO_MAPPING
from .fio import command as fio_cmd
from .fio import setup_files as fio_setup_files
from .harness import MIB, OPS, Bench, Row, is_network_fs
from .lookup import LOOKUP_METHOD
from .lookup import run as run_lookups


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yrcache.bench.store_bench", description=package_doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=".",
                   help="file system to test: a temp dir is made (and removed) under it "
                        "(default .)")
    p.add_argument("--mount-b", metavar="DIR",
                   help="a second mount of the same shared FS as --dir: also measure cold "
                        "lookups from a fresh process through it")
    p.add_argument("--mount-a", metavar="DIR",
                   help="the mount --dir's tree is seen from (default: the mount point holding "
                        "--dir); the temp dir's path relative to it is looked up under --mount-b")
    p.add_argument("--objects", type=int, help="objects per run (default 32; --quick 8)")
    p.add_argument("--layers", type=int, default=32, help="segments per object (default 32)")
    p.add_argument("--segment-bytes", type=parse_size, default=MIB,
                   help="bytes per segment, multiple of 4 KiB (default 1M)")
    p.add_argument("--pairs", type=int, help="ours/fio pairs per op (default 5; --quick 3)")
    p.add_argument("--ops", type=lambda s: [x for x in s.split(",") if x], default=list(OPS),
                   help=f"subset of {','.join(OPS)} (default all)")
    p.add_argument("--backend", default=None, help="I/O engine backend (default: YRCACHE_BACKEND "
                   "or auto)")
    p.add_argument("--qd", type=int, default=8, help="engine queue depth (default 8)")
    p.add_argument("--store-threads", type=int, default=4, help="Store store_threads (default 4)")
    p.add_argument("--load-threads", type=int, default=8, help="Store load_threads (default 8)")
    p.add_argument("--load-window", type=int,
                   help="gets in flight, one slab each (default 2 x load threads)")
    p.add_argument("--fio-jobs", type=int,
                   help="fio --numjobs (default: --store-threads), iodepth qd/jobs each")
    p.add_argument("--fio-extra", default="", help="extra fio options, appended")
    p.add_argument("--no-fio", action="store_true", help="do not run fio")
    p.add_argument("--no-drop-caches", action="store_true",
                   help="do not drop the page cache before read runs")
    p.add_argument("--lookup-chunks", type=int, default=512, help="chain length (default 512)")
    p.add_argument("--lookup-segment-bytes", type=parse_size, default=4096,
                   help="object size of the lookup chain (default 4K)")
    p.add_argument("--lookup-reps", type=int, help="warm lookups (default 100; --quick 20)")
    p.add_argument("--lookup-procs", type=int,
                   help="fresh processes per directory (default 10; --quick 3)")
    p.add_argument("--lookup-stat-reps", type=int,
                   help="further lookups per process, index_ttl=0 (default 10; --quick 5)")
    p.add_argument("--lookup-drop-caches", action="store_true",
                   help="drop the kernel caches before every fresh lookup process")
    p.add_argument("--metaops-n", type=int, default=32,
                   help="metaops: puts and gets of each kind under strace (default 32)")
    p.add_argument("--metaops-chunks", type=int, default=512,
                   help="metaops: chain length of the traced lookups (default 512)")
    p.add_argument("--no-metaops", action="store_true",
                   help="skip the metadata-operations phase (strace), as --ops without metaops")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG (needs matplotlib)")
    p.add_argument("--keep-files", action="store_true", help="leave the temp dir in --dir")
    p.add_argument("--quick", action="store_true",
                   help="8 objects, 3 pairs, fewer lookup repetitions (well under a minute)")
    return p


def _apply_defaults(a: argparse.Namespace) -> None:
    q = a.quick
    a.objects = a.objects or (8 if q else 32)
    a.pairs = a.pairs or (3 if q else 5)
    a.lookup_reps = a.lookup_reps or (20 if q else 100)
    a.lookup_procs = a.lookup_procs or (3 if q else 10)
    a.lookup_stat_reps = a.lookup_stat_reps if a.lookup_stat_reps is not None else (5 if q else 10)
    a.load_window = a.load_window or 2 * a.load_threads
    a.fio_jobs = a.fio_jobs or a.store_threads
    if a.no_metaops:
        a.ops = [o for o in a.ops if o != "metaops"]


def _errors(a: argparse.Namespace, fio: str | None) -> list[str]:
    obj = a.layers * a.segment_bytes
    errs = [f"unknown op {o!r} (use {','.join(OPS)})" for o in a.ops if o not in OPS]
    errs += [f"--{n.replace('_', '-')} must be >= 1" for n in
             ("objects", "layers", "pairs", "qd", "store_threads", "load_threads", "load_window",
              "fio_jobs", "lookup_chunks", "lookup_reps", "lookup_procs", "metaops_n",
              "metaops_chunks")
             if getattr(a, n) < 1]
    errs += ["--metaops-n must be <= 4096"] if a.metaops_n > 4096 else []
    errs += ["--segment-bytes and --lookup-segment-bytes must be positive multiples of 4096"] \
        if min(a.segment_bytes, a.lookup_segment_bytes) <= 0 or \
        (a.segment_bytes | a.lookup_segment_bytes) % 4096 else []
    if fio and a.objects % a.fio_jobs:
        errs.append(f"--objects ({a.objects}) must be a multiple of --fio-jobs ({a.fio_jobs})")
    if a.mount_b and not os.path.isdir(a.mount_b):
        errs.append(f"--mount-b {a.mount_b!r} is not a directory (a dead FUSE mount?)")
    need = 2 * a.objects * (obj + 4096 * (1 + a.layers)) + 64 * MIB
    free = shutil.disk_usage(a.dir).free
    errs += [f"not enough space in {a.dir}: need {need} bytes, {free} free"] if free < need else []
    return errs


def _setup_notes(a: argparse.Namespace, fio: str | None, sysi: dict[str, Any], local: bool,
                 note: Notes) -> None:
    if a.no_fio:
        note("fio disabled (--no-fio): reporting the store alone")
    elif fio is None:
        note("fio not found: reporting the store alone")
    if fio and a.qd % a.fio_jobs:
        note(f"fio: {a.fio_jobs} jobs x iodepth {max(1, a.qd // a.fio_jobs)} != queue depth {a.qd}")
    if not sysi["odirect"]:
        note(f"O_DIRECT unusable in {a.dir}: {sysi['odirect_reason']} (fio --direct=1 will fail)")
    if not local:
        from ...store.store import default_read_cache
        fs = sysi["fs"]["fstype"]
        how = ("loads read through the client's page cache (YRCACHE_READ_CACHE; emptied "
               "before each read run), fio's with O_DIRECT" if default_read_cache(fs)
               else "O_DIRECT bypasses the client's page cache")
        note(f"{a.dir} is on {fs}: {how}; the FS may cache on its own (FUSE "
             f"daemon, servers; a local MooseFS chunkserver's files live in this host's page "
             f"cache, which drop_caches does clear)")
    if a.quick:
        note(f"--quick: {a.objects} objects, {a.pairs} pairs, {a.lookup_procs} lookup processes")
    if fio and a.fio_jobs > 1:
        note(f"fio runs {a.fio_jobs} jobs (= the store's {a.store_threads} store threads) with "
             f"iodepth {max(1, a.qd // a.fio_jobs)} each: the same {a.qd} I/Os in flight as the "
             f"engine and one fsync per file per job, like concurrent puts (--fio-jobs 1 for a "
             f"single job at iodepth {a.qd})")


def _bandwidth_rows(b: Bench, rows: list[Row], ops: list[str], note: Notes) -> None:
    """Every row's ours/fio pairs; untimed before them: objects to load when no store row made
    them, fio's files, and one check that the bytes read back are the bytes written."""
    if rows and "store" not in ops:
        bandwidth.store_run(b)
    for r in rows:
        if b.fio:
            r.fio_cmd = fio_cmd(b, r.op)
        if r.op != "store" and r.fio_cmd is not None:
            try:
                fio_setup_files(b)
            except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
                r.note, r.fio_cmd = f"fio failed laying out its files: {e}", None
                note(f"{r.op}: fio failed laying out its files: {e}")
        if r.op == "load" or (r.op == "load_layer" and "load" not in ops):
            bandwidth.check_data(b)
        bandwidth.run_row(b, r)


def _run(b: Bench, rows: list[Row], ops: list[str],
         note: Notes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The bandwidth rows, then the lookups, then the metadata operations; the temp dir is
    removed (or kept) either way."""
    a = b.a
    lookup = meta = None
    try:
        b.open()
        b.drop_cache()  # probe once: notes why not
        _bandwidth_rows(b, rows, ops, note)
        if "lookup" in ops:
            lookup = run_lookups(b, a.mount_b, a.mount_a)
        if "metaops" in ops:
            meta = metaops.run(b)
    finally:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        b.close()
        if not a.keep_files:
            b.cleanup()
        else:
            note(f"files kept in {b.root}")
    return lookup, meta


def _config(b: Bench, ops: list[str], local: bool, elapsed: float,
            notes: Notes) -> dict[str, Any]:
    a, fio = b.a, b.fio
    return {
        "dir": a.dir, "root": b.root, "mount_b": a.mount_b, "mount_a": a.mount_a,
        "objects": a.objects, "layers": a.layers, "segment_bytes": a.segment_bytes,
        "object_bytes": segment_offsets([a.segment_bytes] * a.layers)[2],
        "bytes_per_run": b.run_bytes, "pairs": a.pairs, "ops": ops, "quick": a.quick,
        "backend": b.eng.backend if b.eng is not None else a.backend, "queue_depth": a.qd,
        "store_threads": a.store_threads, "load_threads": a.load_threads,
        "load_window": a.load_window, "janitor": "off (janitor_period=0)",
        "store_durable": False,  # Store default: no directory fsync after the rename
        "fio": fio, "fio_jobs": a.fio_jobs, "fio_iodepth": max(1, a.qd // a.fio_jobs),
        "fio_bs": b.fio_bs, "fio_extra": a.fio_extra, "fio_mapping": FIO_MAPPING,
        "drop_caches": {"asked": not a.no_drop_caches, "done": b.drop and not a.no_drop_caches,
                        "reason": b.drop_reason},
        "local_fs": local, "timed_region": bandwidth.TIMED, "cpu_method": bandwidth.CPU_METHOD,
        "verify_method": bandwidth.VERIFY_METHOD, "lookup_method": LOOKUP_METHOD,
        "order": "pair i: ours first if i even, else fio first",
        "elapsed_s": round(elapsed, 2), "notes": notes}


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    notes = Notes()
    a.dir = usable_dir(a.dir)
    if a.dir is None:
        return 2
    _apply_defaults(a)
    fio = None if a.no_fio else shutil.which("fio")
    errs = _errors(a, fio)
    if errs:
        print("error: " + "\n       ".join(errs), file=sys.stderr)
        return 2
    sysi = sysinfo(a.dir)
    local = not is_network_fs(sysi["fs"]["fstype"])
    _setup_notes(a, fio, sysi, local, notes)
    ops = [o for o in OPS if o in a.ops]

    b = Bench(a, fio, notes)
    rows = [Row(o) for o in ops if o not in ("lookup", "metaops")]
    runs_per_row = a.pairs * (2 if fio else 1)
    b._progress.total = len(rows) * runs_per_row + (
        2 + a.lookup_procs * (2 if a.mount_b else 1) if "lookup" in ops else 0) + (
        "metaops" in ops)
    t0 = time.monotonic()
    lookup, meta = _run(b, rows, ops, notes)
    elapsed = time.monotonic() - t0
    results = report.results(b, rows)
    verify = report.verify_result(b, results)
    print(report.format_report(results, verify, lookup, local, meta))
    for n in notes:
        print(f"note: {n}")
    print(f"{len(rows)} bandwidth ops x {a.pairs} pairs{', lookups' if lookup else ''}"
          f"{', metadata operations' if meta else ''}, {elapsed:.1f} s")
    if a.json:
        doc = {"schema": 1, "bench": "store", "sysinfo": sysi,
               "fs_mount_b": fs_of(a.mount_b) if a.mount_b else None,
               "config": _config(b, ops, local, elapsed, notes),
               "results": results, "verify": verify, "lookup": lookup, "metaops": meta}
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1)
    if a.plot:
        why = report.plot(results, lookup, a.plot)
        if why:
            print(f"note: {why}")
    return 0
