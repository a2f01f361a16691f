# SPDX-License-Identifier: Apache-2.0
"""The baseline: fio writing and reading the same bytes in the same file layout (its command line
per op, one run and its sample from fio's JSON)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess

from .harness import GB, Bench, Sample

FIO_NAME = "yrcache-store"

FIO_MAPPING = ("fio gets --numjobs=J (J = --fio-jobs, default the store's store_threads), "
               "--iodepth=max(1, QD//J) (so J*iodepth = the engine's queue depth: same I/Os in "
               "flight), --nrfiles=N/J per job, --group_reporting; store and load use "
               "--file_service_type=sequential (each job does one file after the other, as each "
               "put/get does one object), load_layer the default roundrobin with --bs=segment "
               "(segment i of every file, then segment i+1: layer-major like the per-layer gets). "
               "--fixedbufs=1 --registerfiles=1 because the engine registers its buffers")


def command(b: Bench, op: str) -> list[str]:
    assert b.fio is not None
    a = b.a
    jobs = a.fio_jobs
    bs = b.seg if op == "load_layer" else b.fio_bs
    cmd = [b.fio, f"--name={FIO_NAME}", f"--directory={b.fio_dir}",
           f"--rw={'write' if op == 'store' else 'read'}", f"--bs={bs}",
           f"--filesize={b.obj_payload}", f"--nrfiles={b.N // jobs}", "--direct=1",
           "--ioengine=io_uring", f"--iodepth={max(1, a.qd // jobs)}", "--fixedbufs=1",
           "--registerfiles=1", f"--numjobs={jobs}", "--group_reporting",
           "--output-format=json"]
    if op == "store":
        cmd += ["--create_on_open=1", "--fsync_on_close=1"]
    cmd.append("--file_service_type=" + ("roundrobin" if op == "load_layer" else "sequential"))
    return cmd + shlex.split(a.fio_extra or "")


def _clear_files(b: Bench) -> None:
    for name in os.listdir(b.fio_dir):
        os.unlink(os.path.join(b.fio_dir, name))


def run(b: Bench, op: str, cmd: list[str]) -> Sample:
    if op == "store":
        b.fio_files = False
        _clear_files(b)
    else:
        b.drop_cache()
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
    if p.returncode != 0 or "{" not in p.stdout:
        raise RuntimeError(f"fio exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
    job = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]
    st = job["write" if op == "store" else "read"]
    if st["io_bytes"] != b.run_bytes:
        raise RuntimeError(f"fio {op}: {st['io_bytes']} of {b.run_bytes} bytes")
    if op == "store":
        b.fio_files = True
    cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * job["job_runtime"] / 1000.0
    gbps = st["bw_bytes"] / GB
    return Sample(gbps, cpu_s / (st["io_bytes"] / GB), st["io_bytes"] / st["bw_bytes"])


def setup_files(b: Bench) -> None:
    """fio's read jobs need fio's files: write them once (untimed) if no store row did."""
    if b.fio is not None and not b.fio_files:
        run(b, "store", command(b, "store"))
