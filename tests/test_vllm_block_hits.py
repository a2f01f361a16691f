# SPDX-License-Identifier: Apache-2.0
"""Hits as fine-grained as vLLM's own prefix cache (issue 16 §1): a finished request's whole blocks
past its last whole chunk are stored as one-block tail objects, so an engine without the history
in memory (restarted, or on another node) loads exactly the blocks the engine that kept the
history would hit, prefills the rest in the same split, and gives the same tokens, turn after
turn. The chunks stay 256 tokens (two CPU blocks), so most turns end inside a chunk."""
from __future__ import annotations

from pathlib import Path

import pytest

from .test_vllm_connector import BLOCK, CHUNK, LOAD, model, rand_tokens, same_output  # noqa: F401
from .vllm_util import Engine

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

TURNS = 4


def conf(root: Path, **kw) -> dict:
    return {"root": str(root), **LOAD, **kw}


def conversation(model: Path, a: Path, b: Path, log: Path) -> None:  # noqa: F811
    """Turn t runs on: vLLM without yrcache (the reference: its own prefix cache holds the
    history), a reader on root ``b`` with no prefix cache of its own (every turn as after a
    restart; a consumer, so it stores nothing), then the writer on root ``a``, which keeps the
    history in memory and stores it. One more turn runs on a restarted writer."""
    prompt, hits, tails = rand_tokens(700, 31), [], 0
    with Engine(model, None, log=log) as ref, \
            Engine(model, conf(a), log=log, disable_log_stats=False) as writer, \
            Engine(model, conf(b), log=log, role="kv_consumer",
                   enable_prefix_caching=False) as reader:
        for turn in range(TURNS):
            (want,) = ref.generate([prompt], max_tokens=24)
            (got,) = reader.generate([prompt], max_tokens=24)
            (mem,) = writer.generate([prompt], max_tokens=24)
            assert mem["cached"] == want["cached"] and same_output(mem, want), turn
            assert got["cached"] == want["cached"], (turn, got["cached"], want["cached"])
            assert same_output(got, want), f"turn {turn}: the reader's tokens differ"
            hits.append(want["cached"])
            tails += (len(prompt) + len(mem["tokens"]) - 1) // BLOCK % (CHUNK // BLOCK) != 0
            writer.call("drain")
            prompt = prompt + want["tokens"] + rand_tokens(200, 300 + turn)
        rs = reader.call("stats")
        ws = writer.call("stats")
        (want,) = ref.generate([prompt], max_tokens=24)
        with Engine(model, conf(a), log=log) as again:   # a restart on the writer's root
            (got,) = again.generate([prompt], max_tokens=24)
        assert got["cached"] == want["cached"] and same_output(got, want)
    # the hits end inside a chunk: only the tails make them equal
    assert sum(h % CHUNK != 0 for h in hits) >= 2, hits
    assert rs["scheduler"].get("load_tail_blocks", 0) >= 2
    assert rs["tail_cache"]["load_chunks"] >= 2
    assert ws["scheduler"].get("tail_stores_planned", 0) == tails >= 2


def test_restarted_engine_matches_in_memory_history(model: Path,  # noqa: F811
                                                    tmp_path: Path) -> None:
    root = tmp_path / "root"
    conversation(model, root, root, tmp_path / "vllm.log")


def test_engine_on_other_mount_matches_in_memory_history(model: Path,  # noqa: F811
                                                         shared_dirs: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    a, b = shared_dirs
    conversation(model, a / "root", b / "root", tmp_path / "vllm.log")


def test_without_tails_hits_end_on_chunks(model: Path, tmp_path: Path) -> None:  # noqa: F811
    """The control: with store_tails off the reader's hit stops at the last whole chunk, short
    of vLLM's own."""
    root, log = tmp_path / "root", tmp_path / "vllm.log"
    prompt = rand_tokens(700, 32)
    with Engine(model, conf(root, store_tails=False), log=log) as writer:
        (first,) = writer.generate([prompt], max_tokens=24)
        writer.call("drain")
    prompt = prompt + first["tokens"] + rand_tokens(200, 400)
    with Engine(model, conf(root, store_tails=False), log=log) as reader:
        (got,) = reader.generate([prompt], max_tokens=24)
    kv_blocks = (700 + 24 - 1) // BLOCK
    assert got["cached"] == kv_blocks * BLOCK // CHUNK * CHUNK < kv_blocks * BLOCK
