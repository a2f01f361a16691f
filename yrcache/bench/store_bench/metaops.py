# SPDX-License-Identifier: Apache-2.0
"""Metadata operations per store, load and lookup: what one Store asks of a shared file system's
metadata server. A fresh process runs under ``strace -f`` (the metadata system calls only) and
does, between markers, N puts of new objects, N gets of objects another process stored (cold,
then again through the kept-open descriptors), a ledger flush, and lookups of a chain stored by
another process (cold, warm, index expired); the counts per operation go to the report and the
JSON (docs/bench_schema.md, docs/store.md "Metadata operations")."""
from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import yrcache
from yrcache.store.keys import Namespace
from yrcache.store.store import Store

from ..common import format_table
from .harness import CHUNK_TOKENS, Bench

#: the system calls traced: every one that names a file or directory, or acts on one as a whole
#: (what a metadata server answers); close() is not one. "?": a name this architecture lacks
#: (open, stat, ... on arm64) is skipped, not an error.
SYSCALLS = ("openat2", "openat", "open", "creat", "newfstatat", "fstat", "statx", "stat", "lstat",
            "access", "faccessat", "faccessat2", "readlink", "readlinkat", "renameat",
            "renameat2", "rename", "linkat", "link", "unlinkat", "unlink", "mkdirat", "mkdir",
            "rmdir", "fsync", "fdatasync", "flock", "utimensat", "utimes", "futimesat",
            "getdents64", "getdents", "truncate", "ftruncate")
#: how counts are named in the report: strace's names, except "fstat" (a stat of a descriptor:
#: fstat, or newfstatat/statx with an empty path) and "fsync_dir" (fsync/fdatasync of a
#: directory). A file's fsync moves data (the file system's data servers) and is kept apart.
NAMES = ("openat2", "openat", "open", "creat", "fstat", "newfstatat", "statx", "stat", "lstat",
         "access", "faccessat", "faccessat2", "readlink", "readlinkat", "renameat", "renameat2",
         "rename", "linkat", "link", "unlinkat", "unlink", "mkdirat", "mkdir", "rmdir",
         "fsync_dir", "flock", "utimensat", "utimes", "futimesat", "getdents64", "getdents",
         "truncate", "ftruncate")
DATA_NAMES = ("fsync_file",)

#: (key, label, per): the measured operations, in report order; per "op": divided by N
OPS = (("store_open", "open a Store (once per process)", "once"),
       ("put", "put (dedup check; shard dir exists)", "op"),
       ("put_new_dir", "put into a new shard directory", "op"),
       ("put_durable", "put, durable=True", "op"),
       ("get_cold", "get, cold (open + verify)", "op"),
       ("get_warm", "get, warm (open-handle hit)", "op"),
       ("ledger_flush", "usage ledger flush (<= 1/s/process)", "once"),
       ("lookup_cold", "lookup, cold (fresh process)", "once"),
       ("lookup_warm", "lookup, warm (index hit)", "once"),
       ("lookup_stat", "lookup, index expired", "once"),
       ("lookup_partial", "lookup, 60% stored, index expired", "once"))

METAOPS_METHOD = (
    "a fresh Python process under strace -f -y -qq -e trace=<the metadata system calls> "
    "(--seccomp-bpf where strace has it); one Store on the benchmark's root (janitor off, "
    "handle_ttl 600 s so the warm gets hit kept-open descriptors, the usage ledger flushed only "
    "in its own phase). Each phase lies between two marker stat() calls; every traced call of "
    "any thread in between counts (a call split by another thread's output once) when its line "
    "names a path on the cache root (an argument, a descriptor decoded by -y, or the descriptor "
    "returned); others (/sys) are listed apart, as are fsyncs of files (data). Phases: N puts "
    "of new objects (4 KiB header + one --lookup-segment-bytes segment; dedup=True, the "
    "default) into shard directories that exist, into new ones, and with durable=True (a "
    "second Store); N gets of objects the benchmark process stored, cold, then again "
    "(open-handle hits); one ledger flush; lookups of a chain the benchmark process stored: "
    "cold (empty index, background touches waited for), warm (index hit), index expired "
    "(index_ttl=0, touches not due), and index expired on a chain whose first 60% is stored. "
    "Per operation: calls / N for puts and gets, calls for the rest. These are system calls, "
    "not server requests: client caches answer some (MooseFS attribute and directory-entry "
    "caches), and an uncached multi-component path costs a lookup per component")

_CHILD = r"""
import json, os, sys
import yrcache
from yrcache.store.keys import Namespace
from yrcache.store.store import Store
cfg = json.loads(sys.stdin.read())
def mark(name):
    try:
        os.stat(cfg["mark"] + name)
    except OSError:
        pass
ns = Namespace.from_json(cfg["ns"])
gets = [bytes.fromhex(k) for k in cfg["gets"]]
chain = [bytes.fromhex(k) for k in cfg["chain"]]
n, nb = len(gets), cfg["segment_bytes"]
eng = yrcache.IoEngine(cfg["backend"], queue_depth=cfg["qd"])
opts = dict(engine=eng, janitor_period=0, handle_ttl=600.0, max_handles=max(64, n))
mark("store_open")
st = Store(cfg["root"], ns, **opts)
mark("end")
dst = Store(cfg["root"], ns, durable=True, **opts)
for s in (st, dst):
    s.usage.refresh_s = float("inf")  # no ledger flush inside the put phases: its own phase
used = {k[:2] for k in gets + chain}
def new_dir_key():
    while True:
        k = os.urandom(16)
        if k[:2] not in used:
            used.add(k[:2])
            return k
seg = eng.alloc(nb)
def put(s, keys):
    for k in keys:
        if not s.put(k, [seg], parent=k, chunk_index=0, token_count=256, dtype="bfloat16",
                     shape=(nb // 2,)).result():
            sys.exit(f"a put was dropped: {s.stats()}")
out = {}
for name, s, keys in (("put", st, [g[:2] + os.urandom(14) for g in gets]),
                      ("put_new_dir", st, [new_dir_key() for _ in gets]),
                      ("put_durable", dst, [g[:2] + os.urandom(14) for g in gets])):
    mark(name)
    put(s, keys)
    mark("end")
buf = eng.alloc(nb)
for name in ("get_cold", "get_warm"):
    mark(name)
    for k in gets:
        r = st.get(k, [buf], lengths=[nb]).result()
        if not r:
            sys.exit(f"{name}: {r.reason}")
    mark("end")
out["open_handle_hits"] = st.stats()["open_handle_hits"]
mark("ledger_flush")
st.usage.flush()
mark("end")
# the stored part of the last chain ends inside it: the search of O(log n) rounds
partial = chain[:len(chain) * 3 // 5] + [os.urandom(16) for _ in chain[len(chain) * 3 // 5:]]
for name, keys in (("lookup_cold", chain), ("lookup_warm", chain), ("lookup_stat", chain),
                   ("lookup_partial", partial)):
    if name == "lookup_stat":
        st.index_ttl = 0.0
    s0 = st.stats()
    mark(name)
    found = st.lookup(keys)
    st.flush()  # the hits' background touches (mtime refresh, at most once per touch_interval)
    mark("end")
    s1 = st.stats()
    out[name] = {"found": found, "rounds": s1["lookup_rounds"] - s0["lookup_rounds"],
                 "checks": s1["lookup_stats"] - s0["lookup_stats"],
                 "touches": s1["touches"] - s0["touches"]}
dst.close()
st.close()
eng.close()
print(json.dumps(out))
"""

_CALL = re.compile(r"^\d+\s+([a-z_0-9]+)\((.*)$")
_EMPTY_PATH = re.compile(r'^(?:AT_FDCWD|-?\d+)(?:<[^>]*>)?, ""')
_FD_PATH = re.compile(r"^-?\d+<([^>]*)>")


def classify(name: str, args: str) -> str:
    """The report's name of one traced call (see NAMES)."""
    if name in ("newfstatat", "statx") and _EMPTY_PATH.match(args):
        return "fstat"
    if name in ("fsync", "fdatasync"):
        m = _FD_PATH.match(args)
        return "fsync_dir" if m and os.path.isdir(m.group(1)) else "fsync_file"
    return name


def count_calls(log: str, mark: str, roots: tuple[str, ...]
                ) -> dict[str, tuple[collections.Counter[str], collections.Counter[str]]]:
    """Calls per phase in an ``strace -f -y -o`` log, (on the cache root, elsewhere): a marker
    stat of ``mark + phase`` opens a phase, ``mark + "end"`` closes it. A call is on the root
    when its line names a path under one of ``roots`` (a path argument, a descriptor decoded by
    -y, or the descriptor it returns: a /proc/self/fd reopen of an object). A call split by
    another thread's (``<unfinished ...>`` then ``<... name resumed>``) counts once, at its
    start, where its path and descriptor arguments are already printed."""
    phases: dict[str, tuple[collections.Counter[str], collections.Counter[str]]] = {}
    cur: tuple[collections.Counter[str], collections.Counter[str]] | None = None
    with open(log, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            m = _CALL.match(line)
            if m is None:
                continue
            at = line.find(mark)
            if at >= 0:
                phase = line[at + len(mark):].split('"', 1)[0]
                cur = None if phase == "end" else phases.setdefault(
                    phase, (collections.Counter(), collections.Counter()))
                continue
            if cur is not None:
                on_root = any(r in line for r in roots)
                cur[0 if on_root else 1][classify(m.group(1), m.group(2))] += 1
    return phases


def _round(x: float) -> float:
    return round(x, 4)


def per_op(calls: collections.Counter[str], elsewhere: collections.Counter[str],
           count: int) -> dict[str, Any]:
    """One phase's counts: per operation by name (NAMES order), their total, the raw calls;
    data fsyncs and calls off the cache root (/sys, /proc) apart, not in the total."""
    meta = {k: calls[k] for k in NAMES if calls.get(k)}
    meta.update({k: v for k, v in sorted(calls.items())
                 if k not in NAMES and k not in DATA_NAMES and v})
    data = {k: _round(calls[k] / count) for k in DATA_NAMES if calls.get(k)}
    return {"count": count, "per_op": {k: _round(v / count) for k, v in meta.items()},
            "total": _round(sum(meta.values()) / count), "calls": meta,
            "data_per_op": data, "off_root_calls": dict(sorted(elsewhere.items()))}


def _strace_version(strace: str) -> str | None:
    try:
        p = subprocess.run([strace, "-V"], capture_output=True, text=True, timeout=10,
                           check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.splitlines()[0].strip() if p.stdout else None


def _publish(b: Bench, ns: Namespace, n: int, chunks: int) -> tuple[list[bytes], list[bytes]]:
    """N objects to get and a chain of ``chunks`` to look up, stored by this process."""
    a = b.a
    assert b.eng is not None
    nb = a.lookup_segment_bytes
    seg = b.eng.alloc(nb)
    memoryview(seg)[:] = os.urandom(nb)
    gets = [os.urandom(16) for _ in range(n)]
    chain = [os.urandom(16) for _ in range(chunks)]
    with Store(b.root, ns, engine=b.eng, janitor_period=0,
               store_threads=a.store_threads) as st:
        futs = [st.put(k, [seg], parent=k, chunk_index=0, token_count=CHUNK_TOKENS,
                       dtype="bfloat16", shape=(nb // 2,)) for k in gets]
        futs += [st.put(k, [seg], parent=chain[i - 1] if i else ns.digest, chunk_index=i,
                        token_count=CHUNK_TOKENS, dtype="bfloat16", shape=(nb // 2,))
                 for i, k in enumerate(chain)]
        dropped = [f.result() for f in futs].count(False)
    if dropped:
        raise RuntimeError(f"metaops: {dropped} of {len(futs)} fixture puts dropped")
    return gets, chain


def _trace(cmd: list[str], cfg: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The child under strace; without --seccomp-bpf when this strace does not know it."""
    p = subprocess.run(cmd, check=False, input=cfg, capture_output=True, text=True, timeout=300,
                       env=env, cwd="/")
    if p.returncode != 0 and "seccomp" in p.stderr:
        cmd = [c for c in cmd if c != "--seccomp-bpf"]
        p = subprocess.run(cmd, check=False, input=cfg, capture_output=True, text=True,
                           timeout=300, env=env, cwd="/")
    return p


def run(b: Bench) -> dict[str, Any]:
    """The metadata-operations phase: counts per operation, or why it was skipped/failed."""
    a = b.a
    out: dict[str, Any] = {
        "status": "skipped", "reason": None, "strace": shutil.which("strace"),
        "strace_version": None, "method": METAOPS_METHOD, "root": b.root, "n": a.metaops_n,
        "chunks": a.metaops_chunks, "object_bytes": 4096 + a.lookup_segment_bytes,
        "syscalls_traced": list(SYSCALLS), "seconds": None, "ops": {}}
    b.progress("metadata operations (strace)")
    if out["strace"] is None:
        out["reason"] = "strace not found (apt-get install strace)"
        b.note(f"metaops skipped: {out['reason']}")
        return out
    out["strace_version"] = _strace_version(out["strace"])
    t0 = time.monotonic()
    ns = Namespace(model="yrcache-store-bench/metaops", dtype="bfloat16", num_layers=1,
                   kv_heads=8, head_size=128, layout="store-bench-metaops",
                   chunk_tokens=CHUNK_TOKENS)
    gets, chain = _publish(b, ns, a.metaops_n, a.metaops_chunks)
    mark = f"/.yrcache-metaops-mark-{os.urandom(6).hex()}/"
    cfg = json.dumps({"root": b.root, "ns": ns.to_json(), "gets": [k.hex() for k in gets],
                      "chain": [k.hex() for k in chain], "segment_bytes": a.lookup_segment_bytes,
                      "backend": b.eng.backend if b.eng is not None else a.backend,
                      "qd": a.qd, "mark": mark})
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(yrcache.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    fd, log = tempfile.mkstemp(prefix="yrcache-metaops-", suffix=".strace")
    os.close(fd)
    try:
        cmd = [out["strace"], "-f", "-y", "-qq", "--seccomp-bpf", "-o", log,
               "-e", "trace=" + ",".join(f"?{s}" for s in SYSCALLS),
               sys.executable, "-c", _CHILD]
        try:
            p = _trace(cmd, cfg, env)
        except subprocess.TimeoutExpired:
            p = subprocess.CompletedProcess(cmd, -9, "", "timed out after 300 s")
        if p.returncode != 0 or not p.stdout.strip():
            out["status"] = "failed"
            out["reason"] = (f"strace/child exited {p.returncode}: "
                             f"{(p.stderr or p.stdout).strip()[-400:]}")
            b.note(f"metaops failed: {out['reason']}")
            return out
        child = json.loads(p.stdout.strip().splitlines()[-1])
        phases = count_calls(log, mark, tuple({b.root, os.path.realpath(b.root)}))
    finally:
        os.unlink(log)
    for key, _label, per in OPS:
        calls, elsewhere = phases.get(key, (collections.Counter(), collections.Counter()))
        d = per_op(calls, elsewhere, a.metaops_n if per == "op" else 1)
        if key in child:
            d.update(child[key])
        out["ops"][key] = d
    out["open_handle_hits"] = child["open_handle_hits"]
    out["status"] = "ok"
    out["seconds"] = round(time.monotonic() - t0, 3)
    if out["ops"]["lookup_cold"].get("found") != len(chain):
        b.note(f"metaops: the cold lookup found {out['ops']['lookup_cold'].get('found')} of "
               f"{len(chain)} chunks")
    return out


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def format_table_lines(m: dict[str, Any]) -> list[str]:
    """The report's lines: one per operation, its total and its calls by name."""
    if m["status"] != "ok":
        return [f"metadata operations: {m['status']} ({m['reason']})"]
    rows = []
    for key, label, _ in OPS:
        d = m["ops"][key]
        if key.startswith("lookup"):
            label = label.replace("lookup", f"lookup {m['chunks']}", 1)
        by = ", ".join(f"{k} {_fmt(v)}" for k, v in d["per_op"].items()) or "-"
        if d["data_per_op"]:
            by += " (+ data: " + ", ".join(f"{k} {_fmt(v)}" for k, v in
                                           d["data_per_op"].items()) + ")"
        rows.append([label, _fmt(d["total"]), f"  {by}"])
    lk = m["ops"]["lookup_cold"]
    pl = m["ops"]["lookup_partial"]
    return [f"metadata system calls per operation (strace; {m['n']} puts/gets of each kind, "
            f"{_fmt(m['object_bytes'] / 1024)} KiB objects)",
            format_table([("operation", "<44"), ("total", ">7"), ("  by name", "<")], rows,
                         indent="  "),
            f"  lookup {m['chunks']}: cold {lk['rounds']} round(s), {lk['checks']} existence "
            f"checks, {lk['touches']} touches (mtime refresh: openat2 + utimensat each); "
            f"60% stored: {pl['rounds']} rounds, {pl['checks']} checks, found {pl['found']}"]
