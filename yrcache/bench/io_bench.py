# SPDX-License-Identifier: Apache-2.0
"""Sequential write/read bandwidth of :class:`yrcache.IoEngine` against fio running the same job.

Each configuration (op, block size, queue depth, backend) runs ``--pairs`` pairs on the same file
system; pair *i* runs the engine first when *i* is even, fio first otherwise. Both sides use
O_DIRECT, a fresh (deleted, re-created and fallocated) file for every write run, and a final fsync
inside the timed region of every write run. Two baselines show what plain Python would do: an
O_DIRECT ``os.pwrite``/``os.preadv`` loop and pyuring at queue depth 8. See docs/bench_schema.md.

    python -m yrcache.bench.io_bench --dir /mnt/nvme --json out.json --plot out.png
    python -m yrcache.bench.io_bench --dir /mnt/nvme --quick
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import mmap
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yrcache

from ..envs import parse_size
from .common import (
    Bars,
    Notes,
    Panel,
    Progress,
    fmt_size,
    format_table,
    num,
    plot_bars,
    spread,
    sysinfo,
    throughput_summary,
    usable_dir,
)

GB = 1e9  # GB/s and s/GB use decimal gigabytes
MIB = 1 << 20
MAX_BUF = 256 * MIB  # the source/destination buffer; a file is done in slices of this size
TARGET_QD = 8
DEFAULT_QDS = {"uring": [1, 8, 32], "psync": [1, 8]}
ENGINE_BACKENDS = ("uring", "psync")
BASELINES = ("python-odirect", "pyuring")
PSYNC_FIO = ("psync backend vs fio --ioengine=psync --numjobs=QD, each job streaming one of QD "
             "equal regions (--size=SIZE/QD --offset_increment=SIZE/QD --group_reporting); the "
             "engine's psync pool has QD threads")
CPU_METHOD = ("engine/baselines: getrusage(RUSAGE_SELF) ru_utime+ru_stime delta around the timed "
              "region (all threads of this process, io_uring io-wq workers included); fio: "
              "(usr_cpu+sys_cpu)/100 * job_runtime/1000 from its JSON (with group_reporting both "
              "are summed over the jobs, so this is the CPU time of all jobs)")
BUFFERS = ("engine: two yrcache.HostBuffer of min(size, 256 MiB) (mmap + MADV_HUGEPAGE, "
           "registered as io_uring fixed buffers where possible), a file done as back-to-back "
           "slices of that size; fio: its own io_u buffers (--mem default); baselines: mmap with "
           "4 KiB pages, one block (python-odirect) or QD blocks (pyuring)")
TIMED = ("engine: from the first pwrite/pread submission to the completion of the last request "
         "(writes: plus fsync); open and fallocate are outside, as fio's layout is outside its "
         "runtime; fio: its own bw_bytes (io_bytes / runtime, end_fsync included)")


@dataclass
class Sample:
    gbps: float
    cpu_s_per_gb: float


@dataclass
class Row:
    op: str
    bs: int
    qd: int
    backend: str
    engine: list[Sample] = field(default_factory=list)
    fio: list[Sample] = field(default_factory=list)
    fio_cmd: list[str] | None = None
    comparable: bool = True
    note: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.op} {fmt_size(self.bs)} qd{self.qd} {self.backend}"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(nbytes: int, fn: Callable[[], None]) -> Sample:
    c0, t0 = _cpu(), time.perf_counter()
    fn()
    dt, cpu = time.perf_counter() - t0, _cpu() - c0
    return Sample(nbytes / dt / GB, cpu / (nbytes / GB))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Bench:
    def __init__(self, args: argparse.Namespace, fio: str | None, notes: list[str]) -> None:
        self.a = args
        self.size: int = args.size
        self.fio = fio
        self.notes = notes
        tag = f".yrcache_bench_{os.getpid()}"
        self.wpath = os.path.join(args.dir, tag + "_write.bin")
        self.rpath = os.path.join(args.dir, tag + "_read.bin")
        self.buflen = min(self.size, MAX_BUF)
        self.wbuf = yrcache.HostBuffer(self.buflen)
        self.rbuf = yrcache.HostBuffer(self.buflen)
        wmv, rmv = memoryview(self.wbuf), memoryview(self.rbuf)
        for off in range(0, self.buflen, 16 * MIB):  # random data, generated once; every page
            n = min(16 * MIB, self.buflen - off)      # touched now, not in the first timed run
            wmv[off:off + n] = os.urandom(n)
            rmv[off:off + n] = bytes(n)
        self._progress = Progress(0)
        self.direct = True

    # -- the engine ---------------------------------------------------------------------------
    def slices(self) -> list[tuple[int, int]]:
        return [(off, min(self.buflen, self.size - off))
                for off in range(0, self.size, self.buflen)]

    def engine_run(self, eng: yrcache.IoEngine, op: str) -> Sample:
        if op == "write":
            _unlink(self.wpath)
            f = eng.open(self.wpath, "w")
            eng.fallocate(f, 0, self.size).result()
            mv, submit = memoryview(self.wbuf), eng.pwrite
        else:
            f = eng.open(self.rpath, "r")
            mv, submit = memoryview(self.rbuf), eng.pread
        self.direct = f.direct

        def go() -> None:  # all slices submitted back to back: the engine always has work queued
            done = yrcache.gather(*[submit(f, mv[:n], off) for off, n in self.slices()])
            if sum(done) != self.size:
                raise RuntimeError(f"engine {op}: {sum(done)} of {self.size} bytes")
            if op == "write":
                eng.fsync(f).result()

        try:
            return _measure(self.size, go)
        finally:
            f.close()

    def lay_out_read_file(self, backend: str) -> None:
        with yrcache.IoEngine(backend, queue_depth=8, chunk_bytes=4 * MIB,
                              max_inflight_bytes=32 * MIB) as eng:
            eng.register(self.wbuf)
            with eng.open(self.rpath, "w") as f:
                eng.fallocate(f, 0, self.size).result()
                yrcache.gather(*[eng.pwrite(f, memoryview(self.wbuf)[:n], off)
                                 for off, n in self.slices()])
                eng.fsync(f).result()

    def scrub(self) -> None:
        n = min(MIB, self.buflen)
        rmv = memoryview(self.rbuf)
        rmv[:n] = bytes(n)
        rmv[self.buflen - n:] = bytes(n)

    def check(self, op: str) -> None:
        """First and last MiB of the written file (buffered pread) or of the read buffer."""
        n, wmv = min(MIB, self.size), memoryview(self.wbuf)
        if op == "write":
            fd = os.open(self.wpath, os.O_RDONLY)
            try:
                for off in (0, self.size - n):
                    want = wmv[off % self.buflen:off % self.buflen + n]
                    if os.pread(fd, n, off) != want:
                        raise RuntimeError(f"data check failed: {self.wpath} at offset {off}")
            finally:
                os.close(fd)
        else:
            rmv = memoryview(self.rbuf)
            for off in (0, self.buflen - n):
                if rmv[off:off + n] != wmv[off:off + n]:
                    raise RuntimeError(f"data check failed: read buffer at offset {off}")

    # -- fio ----------------------------------------------------------------------------------
    def fio_cmd(self, op: str, bs: int, qd: int, backend: str) -> list[str]:
        assert self.fio is not None
        cmd = [self.fio, "--name=yrcache-bench",
               f"--filename={self.wpath if op == 'write' else self.rpath}", f"--rw={op}",
               f"--bs={bs}", "--direct=1", "--fallocate=native", "--output-format=json"]
        if backend == "uring":
            # The engine registers its buffers with the ring, so fio registers its own too.
            cmd += ["--ioengine=io_uring", f"--iodepth={qd}", f"--size={self.size}",
                    "--fixedbufs=1", "--registerfiles=1"]
        else:
            region = self.size // qd
            cmd += ["--ioengine=psync", f"--numjobs={qd}", f"--size={region}",
                    f"--offset_increment={region}", "--group_reporting"]
        if op == "write":
            cmd.append("--end_fsync=1")
        return cmd + shlex.split(self.a.fio_extra or "")

    def fio_run(self, cmd: list[str], op: str) -> Sample:
        if op == "write":
            _unlink(self.wpath)
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
        if p.returncode != 0 or "{" not in p.stdout:
            raise RuntimeError(f"fio exited {p.returncode}: "
                               f"{(p.stderr or p.stdout).strip()[-400:]}")
        job = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]
        st = job[op]
        if st["io_bytes"] != self.size:
            raise RuntimeError(f"fio {op}: {st['io_bytes']} of {self.size} bytes")
        cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * job["job_runtime"] / 1000.0
        return Sample(st["bw_bytes"] / GB, cpu_s / (st["io_bytes"] / GB))

    # -- baselines ----------------------------------------------------------------------------
    def _open_direct(self, op: str) -> int:
        if op == "read":
            return os.open(self.rpath, os.O_RDONLY | os.O_DIRECT)
        _unlink(self.wpath)
        fd = os.open(self.wpath, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        os.posix_fallocate(fd, 0, self.size)
        return fd

    def _fill(self, m: mmap.mmap, bs: int) -> None:
        for off in range(0, len(m), bs):
            m[off:off + bs] = memoryview(self.wbuf)[:bs]

    def python_run(self, op: str, bs: int, qd: int) -> Sample:
        m = mmap.mmap(-1, bs)  # page-aligned
        self._fill(m, bs)
        fd = self._open_direct(op)

        def go() -> None:
            for off in range(0, self.size, bs):
                n = os.pwrite(fd, m, off) if op == "write" else os.preadv(fd, [m], off)
                if n != bs:
                    raise OSError(errno.EIO, f"short {op}: {n} of {bs} bytes at {off}")
            if op == "write":
                os.fsync(fd)

        try:
            return _measure(self.size, go)
        finally:
            os.close(fd)
            m.close()

    def pyuring_run(self, op: str, bs: int, qd: int) -> Sample:
        import ctypes

        pyuring: Any = importlib.import_module("pyuring")
        m = mmap.mmap(-1, qd * bs)  # one page-aligned slot of bs bytes per request in flight
        self._fill(m, bs)
        anchor = ctypes.c_char.from_buffer(m)
        base = ctypes.addressof(anchor)
        fd = self._open_direct(op)
        ctx = pyuring.UringCtx(entries=max(64, 2 * qd))
        submit = ctx.write_async_ptr if op == "write" else ctx.read_async_ptr
        nblocks = self.size // bs

        def go() -> None:
            nxt = inflight = 0
            for slot in range(min(qd, nblocks)):  # each *_async_ptr call submits at once
                submit(fd, base + slot * bs, bs, nxt * bs, slot)
                nxt, inflight = nxt + 1, inflight + 1
            while inflight:
                slot, res = ctx.wait_completion()
                inflight -= 1
                if res != bs:
                    raise OSError(-res if res < 0 else errno.EIO, f"pyuring {op}: result {res}")
                if nxt < nblocks:
                    submit(fd, base + slot * bs, bs, nxt * bs, slot)
                    nxt, inflight = nxt + 1, inflight + 1
            if op == "write":
                os.fsync(fd)

        try:
            return _measure(self.size, go)
        finally:
            ctx.close()
            os.close(fd)
            del anchor
            m.close()

    # -- driving ------------------------------------------------------------------------------
    def progress(self, row: Row, who: str) -> None:
        self._progress(f"{row.label} {who}")

    def run_row(self, row: Row) -> None:
        if row.backend in BASELINES:
            fn = self.python_run if row.backend == "python-odirect" else self.pyuring_run
            for _ in range(self.a.pairs):
                self.progress(row, "baseline")
                row.engine.append(fn(row.op, row.bs, row.qd))
            return
        with yrcache.IoEngine(row.backend, queue_depth=row.qd, chunk_bytes=row.bs,
                              max_inflight_bytes=row.qd * row.bs) as eng:
            fixed = [eng.register(self.wbuf), eng.register(self.rbuf)]
            row.info["fixed_buffers"] = all(fixed)
            for i in range(self.a.pairs):
                for who in (("engine", "fio") if i % 2 == 0 else ("fio", "engine")):
                    if who == "engine":
                        self.progress(row, "engine")
                        first_check = self.a.check and i == 0
                        if first_check and row.op == "read":
                            self.scrub()
                        row.engine.append(self.engine_run(eng, row.op))
                        if first_check:
                            self.check(row.op)
                            row.info["checked"] = True
                    elif row.fio_cmd is not None:
                        self.progress(row, "fio")
                        try:
                            row.fio.append(self.fio_run(row.fio_cmd, row.op))
                        except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
                            row.note, row.fio_cmd, row.fio = f"fio failed: {e}", None, []
                            self.notes.append(f"{row.label}: fio failed: {e}")
                            print(f"\nwarning: {row.label}: fio failed: {e}", file=sys.stderr)
            row.info["direct"] = self.direct


def _summary(samples: list[Sample]) -> dict[str, Any] | None:
    return throughput_summary([s.gbps for s in samples], [s.cpu_s_per_gb for s in samples])


def _results(rows: list[Row], size: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by_key = {(r.op, r.bs, r.qd, r.backend): r for r in rows}
    for r in rows:
        eng, fio = _summary(r.engine), _summary(r.fio)
        if fio is not None and r.fio_cmd is not None:
            fio["cmdline"] = shlex.join(r.fio_cmd)
        if r.backend in BASELINES:  # compared with the fio job at the target depth, not rerun
            for be in ENGINE_BACKENDS:
                ref = by_key.get((r.op, r.bs, TARGET_QD, be))
                fio = _summary(ref.fio) if ref is not None else None
                if fio is not None and ref is not None and ref.fio_cmd is not None:
                    fio["cmdline"] = shlex.join(ref.fio_cmd)
                    fio["reference"] = f"the fio job of the {be} qd{TARGET_QD} row (not rerun)"
                    break
        ratio = cpu_ratio = None
        if eng is not None and fio is not None:
            ratio = eng["gbps_median"] / fio["gbps_median"]
            if fio["cpu_s_per_gb_median"] > 0:
                cpu_ratio = eng["cpu_s_per_gb_median"] / fio["cpu_s_per_gb_median"]
        out.append({"op": r.op, "block_bytes": r.bs, "queue_depth": r.qd, "backend": r.backend,
                    "bytes": size, "comparable": r.comparable, "note": r.note, **r.info,
                    "engine": eng, "fio": fio, "ratio": ratio, "cpu_ratio": cpu_ratio})
    return out


REFERENCE_FOOTNOTE = (f"* baselines: fio column = the fio job of the same op/bs at qd{TARGET_QD} "
                      "(uring row, else psync), not rerun")


def _table(results: list[dict[str, Any]]) -> str:
    """One line per result: medians, min-max, ratio and CPU s/GB of the measured side and fio."""
    cols = [("op", "<6"), ("bs", ">7"), ("qd", ">4"), ("", "2"), ("backend/tool", "<15"),
            ("GB/s", ">7"), ("min-max", ">12"), ("fio GB/s", ">10"), ("min-max", ">12"),
            ("ratio", ">7"), ("CPU s/GB", ">10"), ("fio", ">8")]
    rows = []
    for r in results:
        e, fi = r["engine"], r["fio"]
        head = [r["op"], fmt_size(r["block_bytes"]), r["queue_depth"], "", r["backend"]]
        if e is None:
            rows.append(head + [f"not comparable: {r['note']}"])
            continue
        star = "*" if fi is not None and "reference" in fi else ""
        fio_cells = ([num(fi["gbps_median"]) + star, f"{num(fi['gbps_min'])}-{num(fi['gbps_max'])}"]
                     if fi else ["-", "-"])
        rows.append(head + [num(e["gbps_median"]), f"{num(e['gbps_min'])}-{num(e['gbps_max'])}",
                            *fio_cells, num(r["ratio"]), num(e["cpu_s_per_gb_median"], ".3f"),
                            num(fi["cpu_s_per_gb_median"] if fi else None, ".3f")])
    if any(r["fio"] and "reference" in r["fio"] for r in results):
        rows.append(REFERENCE_FOOTNOTE)
    return format_table(cols, rows)


def _plot(results: list[dict[str, Any]], path: str) -> str | None:
    """GB/s of the measured side vs fio per configuration (median, min-max)."""
    rows = [r for r in results if r["engine"] is not None]
    series = []
    for who, color, label in (("engine", "tab:blue", "yrcache / baseline"),
                              ("fio", "tab:gray", "fio")):
        med, lo, hi = zip(*(spread(r[who]) for r in rows)) if rows else ((), (), ())
        colors = ["lightgray" if r[who] and "reference" in r[who] else color for r in rows]
        series.append(Bars(label, list(med), (list(lo), list(hi)), colors))
    labels = [f"{r['op']} {fmt_size(r['block_bytes'])}\nqd{r['queue_depth']} {r['backend']}"
              for r in rows]
    panel = Panel(labels, series, "GB/s (median, min-max)", tick_rotation=60, tick_fontsize=7)
    return plot_bars(path, [panel], panel_width=6.0, height=4.8)


def _csv(text: str, conv: Callable[[str], Any]) -> list[Any]:
    return [conv(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yrcache.bench.io_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=".", help="directory on the file system to test (default .)")
    p.add_argument("--size", type=parse_size, help="file size (default 1G; --quick 256M)")
    p.add_argument("--pairs", type=int, help="engine/fio pairs per config (default 5; --quick 3)")
    p.add_argument("--bs", type=lambda s: _csv(s, parse_size),
                   help="block sizes (default 256K,1M,4M; --quick 1M,4M)")
    p.add_argument("--qd", type=lambda s: _csv(s, int),
                   help="queue depths for every backend (default uring 1,8,32, psync 1,8; "
                        "--quick 8)")
    p.add_argument("--backends", type=lambda s: _csv(s, str),
                   help="uring,psync (default both; --quick: uring, else psync)")
    p.add_argument("--ops", type=lambda s: _csv(s, str), default=["write", "read"],
                   help="write,read (default both)")
    p.add_argument("--no-fio", action="store_true", help="do not run fio")
    p.add_argument("--no-baselines", action="store_true", help="skip python-odirect and pyuring")
    p.add_argument("--fio-extra", default="", help="extra fio options (breaks 'identical job')")
    p.add_argument("--check", action="store_true", help="verify data after the first engine runs")
    p.add_argument("--json", metavar="PATH", help="write results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG bar chart (needs matplotlib)")
    p.add_argument("--keep-files", action="store_true", help="leave the test files in --dir")
    p.add_argument("--quick", action="store_true",
                   help="<= 1 min: 256M, 1M+4M at qd 8, uring only, 3 pairs")
    return p


def _plan(a: argparse.Namespace, odirect: bool) -> list[Row]:
    rows: list[Row] = []
    for op in a.ops:
        for be in a.backends:
            for bs in a.bs:
                for qd in (a.qd or DEFAULT_QDS[be]):
                    rows.append(Row(op, bs, qd, be))
    if not a.no_baselines:
        try:
            importlib.import_module("pyuring")
            why = None
        except (ImportError, OSError) as e:
            why = f"pyuring not importable ({type(e).__name__}: {e}); pip install pyuring"
        nodirect = None if odirect else "O_DIRECT unusable in --dir"
        for op in a.ops:
            for bs in a.bs:
                rows.append(Row(op, bs, 1, "python-odirect", comparable=odirect, note=nodirect
                                or "synchronous single-thread loop: queue depth 1 by nature"))
                rows.append(Row(op, bs, TARGET_QD, "pyuring", comparable=odirect and why is None,
                                note=nodirect or why or (
                                    "read/write_async_ptr on mmap slots (unregistered buffers: "
                                    "pyuring's fixed-buffer I/O is synchronous only); one "
                                    "io_uring_enter per request")))
    return rows


def _usable_backends(note: Notes) -> list[str]:
    info = yrcache.build_info()
    uring_ok = "uring" in info["backends"] and info["io_uring"]["usable"]
    if not uring_ok:
        note(f"io_uring backend unusable here ({info['io_uring']['reason'] or 'not compiled'})")
    return ["uring", "psync"] if uring_ok else ["psync"]


def _apply_defaults(a: argparse.Namespace, usable: list[str], note: Notes) -> None:
    q = a.quick
    a.size = a.size or (256 * MIB if q else 1 << 30)
    a.pairs = a.pairs or (3 if q else 5)
    a.bs = a.bs or ([MIB, 4 * MIB] if q else [256 << 10, MIB, 4 * MIB])
    a.qd = a.qd or ([TARGET_QD] if q else None)
    a.backends = a.backends or (usable[:1] if q else usable)
    for be in [b for b in a.backends if b not in usable]:
        note(f"backend {be!r} not available: skipped")
    a.backends = [b for b in a.backends if b in usable]


def _errors(a: argparse.Namespace) -> list[str]:
    errs = [f"unknown op {o!r}" for o in a.ops if o not in ("write", "read")]
    errs += [f"--size must be a positive multiple of 1 MiB, got {a.size}"] \
        if a.size <= 0 or a.size % MIB else []
    errs += [f"--bs {b} must be a multiple of 4096, at most 256 MiB, dividing --size"
             for b in a.bs if b <= 0 or b % 4096 or b > MAX_BUF or a.size % b]
    errs += [f"psync: --size must be a multiple of qd*bs (size {a.size}, bs {b}, qd {d})"
             for b in a.bs for d in (a.qd or DEFAULT_QDS["psync"])
             if "psync" in a.backends and a.size % (d * b)]
    errs += ["--pairs must be >= 1"] if a.pairs < 1 else []
    free = shutil.disk_usage(a.dir).free
    errs += [f"not enough space in {a.dir}: need {2 * a.size} bytes, {free} free"] \
        if free < 2 * a.size + 64 * MIB else []
    return errs


def _setup_notes(a: argparse.Namespace, fio: str | None, note: Notes) -> None:
    if a.size < 1 << 30:
        note(f"--size {fmt_size(a.size)} is below the 1 GiB the comparison asks for")
    if a.quick:
        note(f"--quick: {fmt_size(a.size)}, bs {','.join(fmt_size(b) for b in a.bs)}, qd "
             f"{','.join(map(str, a.qd))}, backends {','.join(a.backends)}, {a.pairs} pairs")
    if a.no_fio:
        note("fio disabled (--no-fio): reporting the engine alone")
    elif fio is None:
        note("fio not found: reporting the engine alone")


def _run(bench: Bench, rows: list[Row], first_backend: str) -> None:
    """The read file laid out once, then every comparable row; the files go unless kept."""
    a = bench.a
    try:
        if "read" in a.ops:
            bench.lay_out_read_file(first_backend)
        for r in rows:
            if r.backend in ENGINE_BACKENDS and bench.fio:
                r.fio_cmd = bench.fio_cmd(r.op, r.bs, r.qd, r.backend)
            if r.comparable:
                bench.run_row(r)
    finally:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if not a.keep_files:
            _unlink(bench.wpath)
            _unlink(bench.rpath)


def _config(bench: Bench, elapsed: float, notes: Notes) -> dict[str, Any]:
    a = bench.a
    return {"dir": a.dir, "size_bytes": a.size, "pairs": a.pairs, "block_bytes": a.bs,
            "queue_depths": {be: a.qd or DEFAULT_QDS[be] for be in a.backends},
            "backends": a.backends, "ops": a.ops, "quick": a.quick, "fio": bench.fio,
            "fio_extra": a.fio_extra, "baselines": not a.no_baselines,
            "baseline_queue_depth": TARGET_QD, "buffer_bytes": bench.buflen,
            "buffers": BUFFERS, "check": a.check, "psync_fio": PSYNC_FIO,
            "cpu_method": CPU_METHOD,
            "timed_region": TIMED, "order": "pair i: engine first if i even, else fio first",
            "elapsed_s": round(elapsed, 2), "notes": notes}


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    notes = Notes()
    a.dir = usable_dir(a.dir)
    if a.dir is None:
        return 2
    usable = _usable_backends(notes)
    _apply_defaults(a, usable, notes)
    errs = _errors(a)
    if errs:
        print("error: " + "\n       ".join(errs), file=sys.stderr)
        return 2
    fio = None if a.no_fio else shutil.which("fio")
    _setup_notes(a, fio, notes)
    sysi = sysinfo(a.dir)
    if not sysi["odirect"]:
        notes(f"O_DIRECT unusable in {a.dir}: {sysi['odirect_reason']}")

    bench = Bench(a, fio, notes)
    rows = _plan(a, sysi["odirect"])
    bench._progress.total = sum(a.pairs * (2 if fio and r.backend in ENGINE_BACKENDS else 1)
                      for r in rows if r.comparable)
    t0 = time.monotonic()
    _run(bench, rows, usable[0])
    elapsed = time.monotonic() - t0
    results = _results(rows, a.size)
    print(_table(results))
    for n in notes:
        print(f"note: {n}")
    print(f"{len(results)} configs, {a.pairs} samples each, {elapsed:.1f} s")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump({"schema": 1, "sysinfo": sysi, "config": _config(bench, elapsed, notes),
                       "results": results}, fh, indent=1)
    if a.plot:
        why = _plot(results, a.plot)
        if why:
            print(f"note: {why}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
