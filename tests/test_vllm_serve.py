# SPDX-License-Identifier: Apache-2.0
"""What only a real server shows (issue 17 §5): `vllm serve` processes (vLLM's OpenAI API server
module, its engine core in a process of its own) with yrcache, driven over HTTP on the tiny model.

- clients that disconnect mid-stream, while their loads or stores are in flight, on a second
  server started on the root of a running first one: nothing stays held, the server serves on,
  and later turns hit;
- SIGTERM with stores in flight (a slow file system, YRCACHE_TEST_FAULTS) under
  --shutdown-timeout 30: every store is published and no temporary file is left;
- a bad connector configuration fails the start-up with one message that says what is wrong;
- the serving benchmark's smoke run (2 users x 2 turns against real servers).
"""
from __future__ import annotations

import http.client
import json
import os
import re
import time
from pathlib import Path

import pytest

from .test_vllm_connector import chunk_keys, model, object_path, rand_tokens  # noqa: F401
from .test_vllm_metrics import total
from .vllm_util import Server

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def stream(s: Server, prompt: list[int], *, max_tokens: int, cut: str) -> None:
    """A streamed completion whose client goes away: right after sending ("sent": while the
    lookup and the load run) or at the first token ("token": while it decodes and stores)."""
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    c.request("POST", "/v1/completions", json.dumps({
        "model": s.model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
        "temperature": 0, "ignore_eos": True}), {"Content-Type": "application/json"})
    if cut == "token":
        r = c.getresponse()
        while not r.readline().startswith(b"data: {"):
            pass
    c.sock.close()   # no FIN handshake to wait for: the client is just gone
    c.close()


def leftovers(root: Path) -> list[Path]:
    """Temporary files under a root: objects being written."""
    return [p for p in root.rglob("*") if p.is_file() and (p.suffix == ".tmp"
                                                           or p.parent.name == ".tmp")]


def published(root: Path, prompts: list[list[int]]) -> int:
    """How many of the prompts' whole chunks are published under ``root``."""
    n = 0
    for p in prompts:
        try:
            ns, keys = chunk_keys(root, p)
        except ValueError:      # no namespace yet
            return 0
        n += sum(object_path(root, ns, k).exists() for k in keys)
    return n


def wait_for(what: str, ok, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_disconnects_on_a_second_server_of_the_same_root(model: Path, tmp_path: Path) -> None:  # noqa: F811
    root, log = tmp_path / "root", tmp_path / "serve.log"
    prompts = [rand_tokens(1100, 300 + i) for i in range(4)]
    with Server(model, root, log, args=("--shutdown-timeout", "30")) as a:
        for p in prompts:
            a.complete(p)
        # the tokens to expect of a 1024-token hit: vLLM's own, after the same prefill split
        refs = [a.complete(p) for p in prompts]
        assert all(r["cached"] == 1024 for r in refs)
        wait_for("the first server's stores", lambda: published(root, prompts) == 16)
        # a second server on the same root, the first one still running and serving
        with Server(model, root, log, args=("--shutdown-timeout", "30")) as b:
            text = log.read_text(errors="replace")
            api = re.findall(r"\(APIServer pid=(\d+)\)", text)
            worker = re.findall(r"\(Worker pid=(\d+)\) INFO .*yrcache: worker tp0/pp0 ready",
                                text)
            core = re.findall(r"\(EngineCore pid=(\d+)\)", text)
            # the API server, its engine core and the worker with yrcache: separate processes
            assert len(set(worker)) == 2 and core and api
            assert not (set(api) & set(core) or set(api) & set(worker) or set(core) & set(worker))
            followups = []
            for i, p in enumerate(prompts):
                q = p + rand_tokens(400, 400 + i)
                followups.append(q)
                # loads (stored prefix) and stores (the new 400 tokens) cut short
                stream(b, q, max_tokens=64, cut="sent" if i % 2 else "token")
                a.complete(rand_tokens(300, 500 + i), max_tokens=2)   # A serves on meanwhile
            # nothing stays held: no request left, no KV block referenced
            wait_for("the aborted requests to go", lambda: (
                m := b.metrics(), total(m, "vllm:num_requests_running") == 0
                and total(m, "vllm:num_requests_waiting") == 0
                and total(m, "vllm:kv_cache_usage_perc") == 0)[-1])
            loaded0 = total(b.metrics(), "vllm:yrcache_loaded_objects_total")
            # later turns hit, with the tokens of the server that stored them
            for p, ref in zip(prompts, refs):
                r = b.complete(p)
                assert r["cached"] == 1024 and r["tokens"] == ref["tokens"]
            for q in followups:
                assert b.complete(q)["cached"] >= 1024
            assert total(b.metrics(), "vllm:yrcache_loaded_objects_total") >= loaded0
            assert b.p.poll() is None and a.p.poll() is None
    assert leftovers(root) == []
    text = log.read_text(errors="replace")
    assert not [ln for ln in text.splitlines() if "yrcache" in ln and "ERROR" in ln]


def test_sigterm_drains_stores_in_flight(model: Path, tmp_path: Path) -> None:  # noqa: F811
    root, log = tmp_path / "root", tmp_path / "serve.log"
    prompts = [rand_tokens(1100, 600 + i) for i in range(3)]
    # every write takes 0.15 s more (an object is a few writes); vLLM lets its worker process
    # 30 s to exit instead of 5, as the connector's start-up line advises
    slow = {"YRCACHE_TEST_FAULTS": "write:delay150@1+",
            "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS": "30"}
    # store_yield_s=0: slow puts are waited for, not dropped (the drain is under test)
    s = Server(model, root, log, args=("--shutdown-timeout", "30"), env=slow, store_yield_s=0)
    try:
        for p in prompts:
            s.complete(p)
        in_flight = 12 - published(root, prompts)
        s.p.terminate()                       # SIGTERM, as a service manager stops it
        s.p.wait(timeout=60)
    finally:
        s.close()
    assert in_flight > 0, "every store was published before SIGTERM: the test proves nothing"
    assert published(root, prompts) == 12     # drained: all 3 prompts' 4 chunks each
    assert leftovers(root) == []
    text = log.read_text(errors="replace")
    assert "injecting faults 'write:delay150@1+'" in text
    assert "VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS" not in text   # no advice needed: it is set
    assert "Executor: all workers exited gracefully" in text


@pytest.mark.parametrize("extra, message", [
    ({"root": "FILE"}, r"yrcache connector: (cache root|the cache on root) '[^']+/a-file' "
                       r"(is unusable|could not be set up): .*not a directory"),
    ({"root": "ROOT", "mode": "fast"}, r"yrcache connector: mode must be 'async' or 'sync', "
                                       r"got 'fast'"),
    ({"root": "ROOT", "chunk_tokns": 256}, r"yrcache connector: unknown kv_connector_extra_config"
                                           r" keys \['chunk_tokns'\]"),
    ({}, r"yrcache connector: 'root' \(kv_connector_extra_config\) or YRCACHE_ROOT must name "
         r"the cache directory"),
], ids=["root-is-a-file", "unknown-mode", "unknown-key", "no-root"])
def test_bad_configuration_fails_at_start_up(model: Path, tmp_path: Path, extra: dict,  # noqa: F811
                                             message: str) -> None:
    from yrcache.bench.vllm.server import Server as PlainServer
    (tmp_path / "a-file").write_bytes(b"keep")
    paths = {"FILE": str(tmp_path / "a-file"), "ROOT": str(tmp_path / "root")}
    extra = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in extra.items()}
    log = tmp_path / "serve.log"
    assert "YRCACHE_ROOT" not in os.environ, "it would override the configuration under test"
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="did not come up"):
        PlainServer(model, extra, log, timeout=240)
    assert time.monotonic() - t0 < 240      # it ended; it did not hang half-started
    text = log.read_text(errors="replace")
    assert re.search(message, text), text[-3000:]
    assert (tmp_path / "a-file").read_bytes() == b"keep"
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").iterdir())


def test_serving_benchmark_smoke(tmp_path: Path) -> None:
    """yrcache.bench.serve_bench --quick: real servers (native, async, sync; vLLM's offloading
    reported as not running on this backend), 2 users x 2 turns: every turn answered, the second
    turns hit, and the JSON holds each server's command line."""
    from yrcache.bench.vllm import serve
    out = tmp_path / "out"
    assert serve.main(["--dir", str(tmp_path), "--quick", "--out", str(out),
                       "--model-dir", str(tmp_path / "models")]) == 0
    doc = json.loads((out / "serve_bench.json").read_text())
    rows = {r["system"]: r for r in doc["rows"]}
    assert set(rows) == {"native", "async", "sync"}
    assert "only supported on CUDA" in doc["servers"]["offload"]["error"]
    for name, r in rows.items():
        assert r["requests"] == 4 and r["errors"] == 0, r
        assert r["ttft_p50"] > 0 and r["output_tokens_per_s"] > 0
        assert r["reps"] == 1 and len(r["runs"]) == 1
        second = [t for t in r["runs"][0]["run"]["turns"] if t["turn"] == 1]
        assert all(t["cached_tokens"] >= 256 for t in second), second
        assert "--kv-transfer-config" in " ".join(doc["servers"][name]["commands"][0]) \
            or name == "native"
    assert rows["async"]["metrics"]["stored_objects"] > 0
    assert (out / "serve_bench.png").stat().st_size > 0
    assert (out / "async-node0.log").stat().st_size > 0
