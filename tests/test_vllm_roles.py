# SPDX-License-Identifier: Apache-2.0
"""vLLM's kv_role through the shared root (disaggregated prefill): a producer engine prefills and
only stores, a consumer engine only loads; on one root and across the two MooseFS mounts. The
consumer's tokens are compared with an engine that loaded the same prefix (like with like)."""
from __future__ import annotations

from pathlib import Path

import pytest

from .test_vllm_connector import model, rand_tokens, same_output  # noqa: F401 - fixture
from .test_vllm_prefetch import HIT, N_TOK, queue
from .vllm_util import Engine

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def objects(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.kv"))


def cfg(root: Path) -> dict:
    return {"root": str(root), "min_load_tokens": 0}


def roundtrip(model: Path, a: Path, b: Path, log: Path) -> None:  # noqa: F811
    prompts = [rand_tokens(N_TOK, 600 + i) for i in range(3)]
    with Engine(model, cfg(a), log=log, role="kv_producer", disable_log_stats=False) as p:
        first = queue(p, prompts, max_tokens=1)["results"]     # prefill only
        p.call("drain")
        again = queue(p, prompts, max_tokens=1)["results"]     # a producer never loads
        s = p.call("stats")
    assert all(o["cached"] == 0 for o in first)
    assert s["scheduler"].get("lookups", 0) == 0 and s["scheduler"].get("load_requests", 0) == 0
    assert s["cache"]["load_chunks"] == 0 and s["cache"]["store_chunks"] >= 6
    assert all(o["cached"] >= 0 for o in again)
    stored = objects(a)
    assert stored >= 6
    with Engine(model, cfg(b), log=log, role="kv_consumer", disable_log_stats=False) as c:
        out = queue(c, prompts, max_tokens=16)["results"]      # decode with the prompt loaded
        c.call("drain")
        s = c.call("stats")
    assert all(o["cached"] == HIT for o in out)
    assert s["scheduler"].get("store_chunks_planned", 0) == 0 and s["cache"]["store_chunks"] == 0
    assert objects(a) == stored                                # the consumer wrote nothing
    ttft = sorted(o["ttft"] for o in out)
    print(f"consumer TTFT (s): {ttft}")
    # like with like: an engine of both roles that loaded the same prefix
    with Engine(model, cfg(b), log=log, disable_log_stats=False) as e:
        ref = queue(e, prompts, max_tokens=16)["results"]
    assert all(o["cached"] == HIT for o in ref)
    for x, y in zip(out, ref):
        assert same_output(x, y)


def test_producer_stores_consumer_loads(model: Path, tmp_path: Path) -> None:  # noqa: F811
    roundtrip(model, tmp_path / "root", tmp_path / "root", tmp_path / "vllm.log")


def test_producer_and_consumer_on_two_mounts(model: Path, shared_dirs: tuple[Path, Path],  # noqa: F811
                                             tmp_path: Path) -> None:
    a, b = shared_dirs
    roundtrip(model, a / "root", b / "root", tmp_path / "vllm.log")
