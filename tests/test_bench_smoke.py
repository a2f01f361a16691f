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


def test_tails_bench_tiny_run(data_dir, tmp_path):
    """bench/tails: every layout stores, finds and loads the same hit; the tails' object and
    lookup counts are the ones the connector's rule gives."""
    out = tmp_path / "tails.json"
    bench_dir = data_dir / "tails"
    bench_dir.mkdir()
    args = ["--dir", str(bench_dir), "--model", "tiny", "--turns", "2", "--reps", "1",
            "--json", str(out)]
    code = f"import sys; from yrcache.bench.tails import main; sys.exit(main({args!r}))"
    p = run_child(code, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    s = json.loads(out.read_text())["summary"]
    # turns of 700 and 924 tokens (+24 generated) stored, then 1148 asked: vLLM's own hit is the
    # second turn's 7 whole blocks (896 tokens): 3 chunks and a tail, or 7 one-block chunks;
    # without tails 3 chunks (768)
    assert s["chunks+tails"]["hit_tokens"] == s["block chunks"]["hit_tokens"] == 7 * 128
    assert s["chunks only"]["hit_tokens"] == 768
    assert s["chunks+tails"]["objects"] == 4 and s["block chunks"]["objects"] == 7
    assert all(v["all_ok"] for v in s.values())
    assert "chunks+tails" in p.stdout and not list(bench_dir.iterdir())
