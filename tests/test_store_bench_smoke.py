# SPDX-License-Identifier: Apache-2.0
"""The object store benchmark must not rot: run its quick mode with tiny sizes and check its JSON
against the documented schema (docs/bench_schema.md, "Object store benchmark")."""
from __future__ import annotations

import json
import shutil

import pytest

from .helpers import IN_CI, require, run_child


def test_store_bench_tiny_run(data_dir, tmp_path):
    has_fio = shutil.which("fio") is not None
    require(has_fio or not IN_CI, "fio not installed (apt-get install fio)")
    out = tmp_path / "store.json"
    bench_dir = data_dir / "bench"
    bench_dir.mkdir()
    # --mount-a/--mount-b: the same directory twice, a control run of the other-mount path.
    args = ["--quick", "--dir", str(bench_dir), "--objects", "4", "--layers", "4",
            "--segment-bytes", "64K", "--pairs", "1", "--fio-jobs", "2", "--lookup-chunks", "16",
            "--lookup-procs", "1", "--lookup-reps", "3", "--lookup-stat-reps", "2",
            "--no-drop-caches", "--mount-a", str(bench_dir), "--mount-b", str(bench_dir),
            "--metaops-n", "8", "--json", str(out)]
    code = ("import sys; from yrcache.bench.store_bench import main; "
            f"sys.exit(main({args!r}))")
    p = run_child(code, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["bench"] == "store" and doc["sysinfo"]
    cfg = doc["config"]
    assert cfg["quick"] and cfg["objects"] == 4 and cfg["layers"] == 4 and cfg["pairs"] == 1
    assert cfg["segment_bytes"] == 64 << 10 and cfg["bytes_per_run"] == 4 * 4 * (64 << 10)
    assert cfg["fio_jobs"] == 2 and cfg["fio_iodepth"] == 4
    rows = {r["op"]: r for r in doc["results"]}
    assert set(rows) == {"store", "load", "load_layer"}
    for r in rows.values():
        assert r["ours"]["gbps_median"] > 0 and len(r["ours"]["samples"]) == 1
        assert r["target_ratio"] == 0.9
        if has_fio:
            assert "--direct=1" in r["fio"]["cmdline"] and r["ratio"] > 0
            assert isinstance(r["meets_target"], bool)
        else:
            assert r["fio"] is None and r["ratio"] is None
    if has_fio:
        assert "--fsync_on_close=1" in rows["store"]["fio"]["cmdline"]
        assert "--file_service_type=roundrobin" in rows["load_layer"]["fio"]["cmdline"]
    v = doc["verify"]
    assert v["gbps_median"] > 0 and 0 < v["fraction_of_load"]
    assert {"fraction_of_store", "fraction_of_load_layer"} <= set(v)
    lk = doc["lookup"]
    assert lk["chunks"] == 16 and lk["warm"]["n"] == 3 and lk["warm"]["median_ms"] > 0
    for where in ("same_dir", "other_mount"):
        d = lk[where]
        assert d["found_min"] == 16
        assert d["cold_fresh_process"]["n"] == 1 and d["cold_stat_path"]["n"] == 2
        assert d["cold_fresh_process"]["p90_ms"] >= d["cold_fresh_process"]["median_ms"] > 0
    assert lk["other_mount"]["target_ms"] == 10.0
    assert "GB/s" in p.stdout and "lookup of a 16-chunk chain" in p.stdout  # the report
    _check_metaops(doc["metaops"], p.stdout)
    assert not list(bench_dir.iterdir())  # cleaned up


OPENS = ("openat2", "openat", "open", "creat")
CHECKS = ("newfstatat", "statx", "stat", "lstat")  # by path; "fstat" (by descriptor) is apart


def _n(per_op: dict[str, float], names: tuple[str, ...]) -> float:
    return sum(per_op.get(k, 0) for k in names)


def _check_metaops(mo: dict, stdout: str) -> None:
    """The metadata-operations phase (strace): counts that are plausible for what each
    operation does (docs/store.md, "Metadata operations"), whatever their exact values."""
    has_strace = shutil.which("strace") is not None
    if IN_CI:
        assert has_strace, "prerequisite missing in CI: strace (apt-get install strace)"
    if not has_strace:
        assert mo["status"] == "skipped" and "strace" in mo["reason"] and not mo["ops"]
        return
    assert mo["status"] == "ok", mo["reason"]
    assert mo["n"] == 8 and mo["chunks"] == 512 and mo["strace_version"]
    assert mo["open_handle_hits"] == 8
    ops = mo["ops"]
    assert set(ops) == {"store_open", "put", "put_new_dir", "put_durable", "get_cold", "get_warm",
                        "ledger_flush", "lookup_cold", "lookup_warm", "lookup_stat",
                        "lookup_partial"}
    for name, d in ops.items():
        assert d["count"] == (8 if name.startswith(("put", "get")) else 1), name
        assert d["total"] == pytest.approx(sum(d["per_op"].values()), abs=1e-3), name
        assert sum(d["calls"].values()) == pytest.approx(d["total"] * d["count"], abs=1e-2)
        assert "fsync_file" not in d["per_op"]  # data, not metadata: kept apart
    put = ops["put"]["per_op"]
    assert _n(put, ("renameat", "renameat2", "rename", "linkat", "link")) >= 1
    assert _n(put, OPENS) >= 1 and _n(put, CHECKS) >= 1  # the temp file; the dedup check
    assert ops["put_new_dir"]["per_op"].get("mkdirat", 0) >= 1
    assert ops["put_new_dir"]["total"] > ops["put"]["total"]
    assert ops["put_durable"]["per_op"].get("fsync_dir", 0) >= 1
    assert ops["put_durable"]["total"] > ops["put"]["total"]
    assert _n(ops["get_cold"]["per_op"], OPENS) >= 1 and ops["get_warm"]["total"] == 0
    assert ops["ledger_flush"]["per_op"].get("flock", 0) >= 1
    cold, warm, stat = ops["lookup_cold"], ops["lookup_warm"], ops["lookup_stat"]
    assert cold["found"] == warm["found"] == stat["found"] == 512
    for d in (cold, stat, ops["lookup_partial"]):  # O(log n) rounds, not one check per chunk
        assert 1 <= _n(d["per_op"], CHECKS) <= d["checks"] <= 60
        assert 1 <= d["rounds"] <= 6
    assert cold["touches"] == 512 and cold["per_op"].get("utimensat", 0) == 512  # LRU refresh
    assert warm["total"] == 0 and warm["checks"] == 0
    assert stat["touches"] == 0 and "utimensat" not in stat["per_op"]
    assert ops["lookup_partial"]["found"] == 512 * 3 // 5
    assert "metadata system calls per operation" in stdout
