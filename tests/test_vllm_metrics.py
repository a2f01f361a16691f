# SPDX-License-Identifier: Apache-2.0
"""yrcache in vLLM's own /metrics and log (issue 16 §3), scraped from real `vllm serve` processes:
a first server stores (lookup misses, stored objects and bytes, store latencies), a second one
on the same root loads (hits, loaded objects and bytes, load decisions and latencies) and meets
a corrupt object and an unreadable one (corrupt objects, I/O errors by errno, failed loads)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from .test_vllm_connector import chunk_keys, model, object_path, rand_tokens  # noqa: F401
from .vllm_util import Server

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def total(m: dict, name: str, **labels: str) -> float:
    """Sum of a sample over the series whose labels include ``labels``."""
    return sum(v for lv, v in m.get(name, {}).items()
               if all((k, x) in lv for k, x in labels.items()))


def scrape_until(s: Server, ok, what: str, timeout: float = 60) -> dict:
    """Stats reach /metrics with the engine's steps: short requests keep it stepping while
    background stores and loads report."""
    deadline = time.monotonic() + timeout
    while True:
        m = s.metrics()
        if ok(m):
            return m
        if time.monotonic() > deadline:
            yc = {k: v for k, v in m.items() if k.startswith("vllm:yrcache")}
            raise AssertionError(f"/metrics never showed {what}: {yc}")
        s.complete(rand_tokens(8, int(time.monotonic() * 1000)), max_tokens=1)
        time.sleep(0.2)


def test_metrics_and_logs_through_vllm_serve(model: Path, tmp_path: Path) -> None:  # noqa: F811
    root, log = tmp_path / "root", tmp_path / "serve.log"
    P, Q, R = (rand_tokens(1100, 90 + i) for i in range(3))
    with Server(model, root, log) as s:
        m0 = s.metrics()
        # every family is there from the start, at zero
        assert total(m0, "vllm:yrcache_lookup_hits_total") == 0
        assert "vllm:yrcache_decisions_total" in m0 and "vllm:yrcache_io_errors_total" not in m0
        for p in (P, Q, R):
            assert s.complete(p)["cached"] == 0
        m = scrape_until(s, lambda m: total(m, "vllm:yrcache_stored_objects_total",
                                            object="chunk") >= 12, "12 stored chunks")
        assert total(m, "vllm:yrcache_lookup_misses_total") >= 3
        assert total(m, "vllm:yrcache_stored_bytes_total") > 0
        assert total(m, "vllm:yrcache_store_seconds_count") >= 3
        assert total(m, "vllm:yrcache_store_seconds_sum") > 0
    text = log.read_text(errors="replace")
    # yrcache's lines in vLLM's own format, from the engine-core process
    assert re.search(r"INFO \d\d-\d\d \d\d:\d\d:\d\d \[\w+\.py:\d+\] yrcache: worker tp0/pp0 "
                     r"ready", text), text[-3000:]
    assert text.count("shutdown timeout is 0") == 1   # vLLM's default: said once, at start-up
    size = log.stat().st_size

    ns, qkeys = chunk_keys(root, Q)
    path = object_path(root, ns, qkeys[0])
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF                      # Q's first chunk: a flipped payload byte
    path.write_bytes(bytes(data))
    _, rkeys = chunk_keys(root, R)
    rpath = object_path(root, ns, rkeys[0])
    os.unlink(rpath)
    os.mkdir(rpath)                         # R's first chunk: a directory where a file was
    with Server(model, root, log, args=("--shutdown-timeout", "30")) as s:
        assert s.complete(P)["cached"] == 1024
        for p in (Q, R):
            s.complete(p)
        m = scrape_until(s, lambda m: total(m, "vllm:yrcache_corrupt_objects_total") >= 1 and
                         total(m, "vllm:yrcache_io_errors_total") >= 1 and
                         total(m, "vllm:yrcache_load_seconds_count") >= 2, "the loads")
    # P and Q hit (Q's load then meets the flipped byte); R's lookup stops at the directory
    assert total(m, "vllm:yrcache_lookup_hits_total") >= 2
    assert total(m, "vllm:yrcache_lookup_misses_total") >= 1
    assert total(m, "vllm:yrcache_loaded_objects_total", object="chunk") >= 4
    assert total(m, "vllm:yrcache_loaded_bytes_total") > 0
    assert total(m, "vllm:yrcache_loaded_tokens_total") >= 2 * 1024
    assert total(m, "vllm:yrcache_decisions_total", decision="load") >= 2
    assert total(m, "vllm:yrcache_load_failures_total") >= 1
    # R's chunk recomputed and stored again: the directory in its place fails the store
    assert total(m, "vllm:yrcache_stores_dropped_total", reason="failed") >= 1
    errnos = {dict(lv)["errno"] for lv in m["vllm:yrcache_io_errors_total"]}
    assert errnos and all(re.fullmatch(r"E[A-Z]+", e) for e in errnos), errnos
    later = log.read_text(errors="replace")[size:]
    assert "yrcache: worker tp0/pp0 ready" in later and "shutdown timeout is 0" not in later
    # --shutdown-timeout 30, but vLLM still kills its worker 5 s into a shutdown: said once
    assert later.count("(VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS), then kills it") == 1
