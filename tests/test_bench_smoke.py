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


def test_serve_bench_combines_repetitions():
    """serve_bench --reps: a row is the median over its runs (NaN-free), requests and errors
    add up, every run's p90 is kept, and the SLO is judged on the medians."""
    import random

    from yrcache.bench.vllm.serve import METRICS, combine_reps, largest_within, summarize_run
    from yrcache.bench.vllm.users import Run, Turn

    rng = random.Random(7)

    def run(scale: float, error: bool = False) -> Run:
        turns = [Turn(user=u, turn=t, server=0, prompt_tokens=1000 + 100 * t, start=0.0,
                      ttft=scale * (0.1 + rng.random()), answer_tokens=16,
                      cached_tokens=900 if t else 0) for u in range(3) for t in range(4)]
        if error:
            turns[-1].error = "HTTP 500"
        return Run(turns, wall_s=10.0 * scale)

    zero = dict.fromkeys(METRICS, 0.0)
    rows = []
    for system, scales in (("native", (1.0, 3.0, 2.0)), ("async", (0.5, 0.4, 0.6))):
        runs = [{"system": system, "users": 4, "rep": i,
                 **summarize_run(run(s, error=(system == "native" and i == 1)), zero,
                                 {**zero, "loaded_objects": 10.0 * (i + 1)})}
                for i, s in enumerate(scales)]
        row = combine_reps(runs)
        p90s = [r["ttft_p90"] for r in runs]
        assert row["ttft_p90_runs"] == p90s
        assert row["ttft_p90"] == sorted(p90s)[1]                      # the median of 3
        assert row["wall_s"] == sorted(r["wall_s"] for r in runs)[1]
        assert row["metrics"]["loaded_objects"] == 20.0
        assert row["requests"] == 36 and row["reps"] == 3 and row["runs"] == runs
        assert row["errors"] == (1 if system == "native" else 0)
        assert row["hit_turn_ttft_p50"] == row["hit_turn_ttft_p50"]    # not NaN
        rows.append(row)
    # an errored run disqualifies its N; the other system meets an SLO above its median p90
    assert largest_within(rows, "native", 1e9) == 0
    slo = rows[1]["ttft_p90"]
    assert largest_within(rows, "async", slo) == 4
    assert largest_within(rows, "async", slo * 0.999) == 0


def test_serve_bench_users_read_long_stream_events():
    """A streamed completion whose first event is longer than aiohttp's line limit (a 128K
    prompt's echoed token ids, ~0.8 MB) is read whole: TTFT, answer and usage are recorded."""
    import asyncio
    import threading

    from aiohttp import web

    from yrcache.bench.vllm.users import Workload, run_users

    prompt_lens: list[int] = []

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt_lens.append(len(body["prompt"]))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        first = {"choices": [{"prompt_token_ids": body["prompt"], "token_ids": [7]}]}
        await resp.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        for t in range(1, body["max_tokens"]):
            await resp.write(b"data: " + json.dumps({"choices": [{"token_ids": [t]}]}).encode()
                             + b"\n\n")
        usage = {"choices": [], "usage": {"prompt_tokens_details": {"cached_tokens": 5}}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/completions", completions)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    try:
        w = Workload(users=1, turns=2, system_tokens=0, first_tokens=131072, user_tokens=8,
                     answer_tokens=4, arrival_s=0, think_s=0)
        run = run_users([f"http://127.0.0.1:{port}"], "m", w, salt="s")
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        th.join(30)
    assert [t.error for t in run.turns] == ["", ""]
    assert prompt_lens == [131072, 131072 + 4 + 8]      # the answer went into the history
    assert all(t.answer_tokens == 4 and t.cached_tokens == 5 and t.ttft > 0 for t in run.turns)
