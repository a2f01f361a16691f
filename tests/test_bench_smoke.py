# SPDX-License-Identifier: Apache-2.0
"""The bandwidth benchmark must not rot: run it with tiny sizes (kvikio's pattern) and check its
JSON against the documented schema (docs/bench_schema.md)."""
from __future__ import annotations

import json
import shutil

from .helpers import IN_CI, require, run_child


def test_io_bench_tiny_run(data_dir, tmp_path):
    has_fio = shutil.which("fio") is not None
    require(has_fio or not IN_CI, "fio not installed (apt-get install fio)")
    out = tmp_path / "io.json"
    bench_dir = data_dir / "bench"
    bench_dir.mkdir()
    args = ["--dir", str(bench_dir), "--size", "16M", "--bs", "1M", "--qd", "2", "--pairs", "1",
            "--ops", "write,read", "--backends", "psync", "--no-baselines", "--check",
            "--json", str(out)]
    code = ("import sys; from yrcache.bench.io_bench import main; "
            f"sys.exit(main({args!r}))")
    p = run_child(code, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["sysinfo"] and doc["config"]
    rows = doc["results"]
    assert {r["op"] for r in rows} == {"write", "read"}
    for r in rows:
        assert r["backend"] == "psync" and r["block_bytes"] == 1 << 20 and r["queue_depth"] == 2
        assert r["engine"]["gbps_median"] > 0 and len(r["engine"]["samples"]) == 1
        if has_fio:
            assert "--direct=1" in r["fio"]["cmdline"] and r["ratio"] > 0
    assert "GB/s" in p.stdout  # the table
    assert not list(bench_dir.iterdir())  # cleaned up
