# SPDX-License-Identifier: Apache-2.0
"""Adversarial use of the Cache, KVLayout and the connector's config: every bad argument raises
at the call (TypeError/ValueError naming it), never as a cache fault or in a background thread;
a damaged object is replaced by the store of the recomputed KV; a load-only root loads."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import yrcache
from yrcache.cache.cache import Cache
from yrcache.cache.layout import KVLayout
from yrcache.integrations.vllm.config import ConnectorConfig

from .test_cache import CHUNK, LAYOUT, NS, PER, paged_kv, same

DENSE = KVLayout.dense(num_layers=2, dtype="float16", kv_heads=2, head_size=8)
DENSE_NS = DENSE.namespace("test-dense", chunk_tokens=32)


@pytest.fixture
def root(data_dir: Path) -> Path:
    return data_dir / "root"


def cache(root: Path, **kw: Any) -> Cache:
    return Cache(root, NS, LAYOUT, staging_bytes=4 << 20, janitor_period=0, **kw)


# -- construction -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, kw, exc, msg", [
    (("", NS, LAYOUT), {}, ValueError, "root"),
    (("{root}", "a string namespace", LAYOUT), {}, TypeError, "namespace must be a Namespace"),
    (("{root}", NS, "paged"), {}, TypeError, "layout must be a KVLayout"),
    (("{root}", NS, LAYOUT), {"mode": "fast"}, ValueError, "mode"),
    (("{root}", NS, LAYOUT), {"copy_threads": -1}, ValueError, "copy_threads"),
    (("{root}", NS, LAYOUT), {"copy_threads": 10**6}, ValueError, "copy_threads"),
    (("{root}", NS, LAYOUT), {"copy_threads": True}, TypeError, "copy_threads"),
    (("{root}", NS, LAYOUT), {"staging_bytes": 0}, ValueError, "staging_bytes"),
    (("{root}", NS, LAYOUT), {"staging_bytes": 2.5e8}, TypeError, "staging_bytes"),
    (("{root}", NS, LAYOUT), {"host_tier_bytes": -1}, ValueError, "host_tier_bytes"),
    (("{root}", NS, LAYOUT), {"lookup_threads": 100_000}, ValueError, "lookup_threads"),
    (("{root}", NS, LAYOUT), {"lookup_threads": 2**63}, ValueError, "lookup_threads"),
])
def test_cache_constructor_rejects(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   args: tuple, kw: dict, exc: type, msg: str) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = tuple(str(root) if a == "{root}" else a for a in args)
    with pytest.raises(exc, match=msg):
        Cache(*args, **{"staging_bytes": 4 << 20, **kw})
    assert not any(cwd.iterdir())   # never a cache root in the current directory


@pytest.mark.parametrize("field, value, exc", [
    ("num_layers", 0, ValueError), ("num_layers", True, TypeError),
    ("num_layers", 2**40, ValueError),
    ("kv_heads", 1.0, TypeError), ("head_size", -1, ValueError), ("page_bytes", "4096", TypeError),
    ("block_tokens", 2**63, ValueError), ("name", "", ValueError), ("name", "a\0b", ValueError),
    ("name", None, ValueError), ("dtype", "x" * 10_000, ValueError), ("dtype", None, ValueError),
])
def test_layout_rejects(field: str, value: Any, exc: type) -> None:
    kw = dict(name="t", num_layers=2, dtype="float16", kv_heads=2, head_size=8, block_tokens=16,
              page_bytes=1024)
    kw[field] = value
    with pytest.raises(exc, match=field):
        KVLayout.paged(kw.pop("name"), **kw)


# -- calls ------------------------------------------------------------------------------------
def test_bad_call_arguments_raise_at_the_call(root: Path) -> None:
    rng = np.random.default_rng(0)
    kv = paged_kv(rng)
    toks = rng.integers(0, 50_000, CHUNK * 2)
    ids = np.arange(2 * PER)
    with cache(root) as c:
        keys = c.keys(toks)
        with pytest.raises(TypeError, match="kv must be a sequence"):
            c.store(toks, None, ids)
        with pytest.raises(TypeError, match="kv must be a sequence"):
            c.load(toks, 42, ids)
        for bad, exc in ((b"short", ValueError), ("ab" * 16, TypeError), (None, TypeError),
                         (keys[0] + b"x", ValueError)):
            with pytest.raises(exc, match=r"keys\[1\]"):
                c.load_chunks([keys[0], bad], kv, ids)
            with pytest.raises(exc, match=r"keys\[1\]"):
                c.begin_store([keys[0], bad], kv, ids, parent=NS.digest)
        with pytest.raises(TypeError, match="keys must be a sequence"):
            c.load_chunks(keys[0], kv, ids)   # one key's bytes, not a list of keys
        with pytest.raises(ValueError, match="parent"):
            c.begin_store(keys, kv, ids, parent=b"")
        for first, exc in ((2**40, ValueError), (2**32 - 1, ValueError), (-1, ValueError),
                           (1.0, TypeError), (True, TypeError)):
            with pytest.raises(exc, match="first_index"):
                c.begin_store(keys, kv, ids, parent=NS.digest, first_index=first)
        with pytest.raises(ValueError, match="batch is for dense"):
            c.store(toks, kv, ids, batch=1)
        with pytest.raises(TypeError, match="replace"):
            c.begin_store(keys, kv, ids, parent=NS.digest, replace=[None])
        # nothing was claimed, written or counted by the refused calls
        st = c.stats()
        assert (st["stores"], st["loads"], st["chunks_being_stored"]) == (0, 0, 0)
        assert c.store(toks, kv, ids).result().stored == 2
        assert c.lookup(toks) == 2 * CHUNK
    with pytest.raises(yrcache.ClosedError):
        c.store(toks, kv, ids)
    with pytest.raises(yrcache.ClosedError):
        c.load_chunks(keys, kv, ids)


def test_dense_batch_out_of_range_raises_on_load_and_store(root: Path) -> None:
    rng = np.random.default_rng(1)
    kv = [tuple(rng.standard_normal((2, 2, 64, 8)).astype(np.float16) for _ in range(2))
          for _ in range(2)]
    toks = rng.integers(0, 50_000, 64)
    with Cache(root, DENSE_NS, DENSE, staging_bytes=4 << 20, janitor_period=0) as c:
        for batch in (2, 2**40, -1):
            with pytest.raises(ValueError, match="batch"):
                c.store(toks, kv, batch=batch)
            with pytest.raises(ValueError, match="batch"):
                c.load(toks, kv, batch=batch)
        assert c.store(toks, kv, batch=1).result().stored == 2
        out = [tuple(np.zeros_like(t) for t in pair) for pair in kv]
        assert c.load(toks, out, batch=1).result().tokens == 64
        assert same(out[1][0][1], kv[1][0][1]) and not out[1][0][0].any()
        assert c.stats()["load_partial"] == 0


# -- repair -----------------------------------------------------------------------------------
def _damage(c: Cache, key: bytes) -> None:
    """Flip bytes in the middle of an object's payload (its header stays valid)."""
    path = Path(c.store_.path_of(key))
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("replace", [False, True])
def test_recomputed_chunks_replace_damaged_objects(root: Path, replace: bool) -> None:
    """Chunks 1 and 2 are damaged; a load stopped at chunk 1, so chunk 2's damage is unknown. The
    store of the recomputed chunks 1.. must write over both (replace), or the next load fails
    again at chunk 2; without replace, existing objects are skipped (the cheap default)."""
    rng = np.random.default_rng(2)
    kv = paged_kv(rng)
    toks = rng.integers(0, 50_000, CHUNK * 3)
    ids = np.arange(3 * PER)
    with cache(root, mode="sync") as c:
        keys = c.keys(toks)
        assert c.store(toks, kv, ids).result().stored == 3
        for k in keys[1:]:
            _damage(c, k)
        w = c.begin_store(keys[1:], kv, ids[PER:], parent=keys[0], first_index=1,
                          replace=keys[1:] if replace else ())
        for layer in range(LAYOUT.num_layers):
            w.gather(layer)
        res = w.commit().result()
        assert (res.stored, res.existing) == ((2, 0) if replace else (0, 2))
        assert c.stats()["store_replaced"] == (2 if replace else 0)
        out = [np.zeros_like(x) for x in kv]
        r = c.load_chunks(keys, out, ids).result()
        assert r.loaded == (3 if replace else 1)
        if replace:
            assert all(same(o[:3 * PER], x[:3 * PER]) for o, x in zip(out, kv))
        else:
            assert r.reason.startswith("corrupt")


# -- config -----------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, msg", [
    ({}, "root"),
    ({"root": ""}, "root"),
    ({"root": "/x\0y"}, "NUL byte"),
    ({"root": 42}, "expected a string"),
    ({"root": "/x", "mode": "fast"}, "mode"),
    ({"root": "/x", "chunk_tokens": 0}, "chunk_tokens"),
    ({"root": "/x", "chunk_tokens": 2**40}, "chunk_tokens"),
    ({"root": "/x", "chunk_tokens": 1.5}, "chunk_tokens"),
    ({"root": "/x", "chunk_tokens": True}, "chunk_tokens"),
    ({"root": "/x", "staging_bytes": "1e999"}, "staging_bytes"),
    ({"root": "/x", "capacity_bytes": 2**70}, "capacity_bytes"),
    ({"root": "/x", "capacity_bytes": -1}, "capacity_bytes"),
    ({"root": "/x", "lookup_wait_ms": math.nan}, "lookup_wait_ms"),
    ({"root": "/x", "lookup_wait_ms": "inf"}, "lookup_wait_ms"),
    ({"root": "/x", "drain_timeout_s": -1}, "drain_timeout_s"),
    ({"root": "/x", "backend": "cufile"}, "backend"),
    ({"root": "/x", "load_failure_policy": "ignore"}, "load_failure_policy"),
    ({"root": "/x", "rooot": "/y"}, "unknown"),
    ({"root": "/x", "store_tails": "maybe"}, "store_tails"),
    ({"root": "/x", "store_tails": 2}, "store_tails"),
])
def test_connector_config_rejects(extra: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ConnectorConfig.from_extra(extra, {})


def test_connector_config_env_overrides_are_checked_too() -> None:
    with pytest.raises(ValueError, match="YRCACHE_CHUNK_TOKENS"):
        ConnectorConfig.from_extra({"root": "/x"}, {"YRCACHE_CHUNK_TOKENS": "many"})
    with pytest.raises(ValueError, match="lookup_wait_ms"):
        ConnectorConfig.from_extra({"root": "/x"}, {"YRCACHE_LOOKUP_WAIT_MS": "nan"})
    cfg = ConnectorConfig.from_extra({"root": "/x"}, {"YRCACHE_LOOKUP_WAIT_MS": "2.5"})
    assert cfg.lookup_wait_ms == 2.5
    assert ConnectorConfig.from_extra({"root": "/x"}, {}).store_tails is True
    for raw, want in (("false", False), ("0", False), ("Off", False), ("yes", True)):
        cfg = ConnectorConfig.from_extra({"root": "/x"}, {"YRCACHE_STORE_TAILS": raw})
        assert cfg.store_tails is want
    assert ConnectorConfig.from_extra({"root": "/x", "store_tails": False}, {}).store_tails is False


# -- soak -------------------------------------------------------------------------------------
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_soak_structures_and_descriptors_stay_bounded(root: Path) -> None:
    """400 operations (stores of new prefixes under a capacity bound that makes the janitor
    evict, loads of live and evicted ones, refused calls): every per-operation structure drains,
    the host tier stays within its budget and descriptors do not grow."""
    rng = np.random.default_rng(3)
    kv = paged_kv(rng)
    ids = np.arange(2 * PER)
    obj = 2 * (LAYOUT.segment_bytes(CHUNK) + 4096) * LAYOUT.num_layers
    with cache(root, capacity_bytes=20 * obj, host_tier_bytes=4 * obj) as c:
        prompts = [rng.integers(0, 50_000, CHUNK * 2) for _ in range(100)]
        fds0 = None
        for i, toks in enumerate(prompts):
            c.store(toks, kv, ids).result(timeout=30)   # may fail: the root is full at times
            out = [np.zeros_like(x) for x in kv]
            c.load(prompts[i // 2], out, ids).result(timeout=30)    # live or evicted: no matter
            with pytest.raises(ValueError):
                c.load_chunks([b"bad"], kv, ids)
            if i % 5 == 4:
                c.store_.run_janitor()
            if i == 20:
                fds0 = _fds()
        st = c.stats()
        assert st["chunks_being_stored"] == 0 and st["operations_in_flight"] == 0
        assert st["host_tier_bytes"] <= 4 * obj
        assert st["staging_free_store_slabs"] == c._staging.store_slabs
        assert st["staging_free_load_slabs"] == c._staging.load_slabs
        assert st["store"]["evictions"] > 0 and st["stores"] == 100
        assert fds0 is not None and _fds() <= fds0 + 2


def test_every_connector_setting_is_a_registered_variable() -> None:
    """One registry (yrcache.envs.ENV) holds every YRCACHE_* variable: the connector's overrides
    included, so `yrcache info` lists them and a typo is reported."""
    import dataclasses

    from yrcache import envs
    for f in dataclasses.fields(ConnectorConfig):
        assert f"YRCACHE_{f.name.upper()}" in envs.ENV, f.name
    with pytest.raises(KeyError, match="not a registered"):
        envs.raw("YRCACHE_NO_SUCH_THING")


def test_env_values_are_parsed_and_typos_reported(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from yrcache import cli, envs
    monkeypatch.setenv("YRCACHE_GPU_COPY", "teleport")
    with pytest.raises(ValueError, match="YRCACHE_GPU_COPY='teleport' is invalid"):
        envs.get("YRCACHE_GPU_COPY")
    monkeypatch.setenv("YRCACHE_CHUNK_BYTES", "2M")
    assert envs.get("YRCACHE_CHUNK_BYTES") == 2 << 20
    monkeypatch.setenv("YRCACHE_QEUE_DEPTH", "4")   # a typo
    assert cli.main(["info", "--json"]) == 0
    import json
    doc = json.loads(capsys.readouterr().out)
    assert "YRCACHE_QEUE_DEPTH" in doc["env_unknown"]
    assert not set(doc["env_unknown"]) & set(envs.ENV)
    assert doc["env"]["YRCACHE_CHUNK_BYTES"] == "2M"
    assert set(doc["env_known"]) == set(envs.ENV)
