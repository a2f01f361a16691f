# SPDX-License-Identifier: Apache-2.0
"""The vLLM connector's parts without an engine: config, namespaces per rank, the worker side on
real tensors and a real Cache (layer-wise waits, tensor checks), the scheduler side's lookups and
block-release decisions. vLLM must be importable (its spec classes are used); the end-to-end tests
on real engines are in test_vllm_connector.py."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from .helpers import require
from .vllm_util import vllm_status

ok, why = vllm_status()
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.vllm

L, BT, HEADS, HS, CHUNK = 4, 16, 2, 8, 32
PER = CHUNK // BT


@pytest.fixture(autouse=True)
def _need_vllm() -> None:
    require(ok, why)


def fake_config(tp: int = 1, pp: int = 1, layers: int = L, total_kv: int = HEADS,
                layout: str = "LBHNC") -> tuple[SimpleNamespace, SimpleNamespace]:
    from vllm.v1.kv_cache_interface import FullAttentionSpec
    spec = FullAttentionSpec(block_size=BT, num_kv_heads=max(1, total_kv // tp), head_size=HS,
                             dtype=torch.bfloat16)
    mc = SimpleNamespace(model="/models/m", revision="r1", quantization=None,
                         get_total_num_kv_heads=lambda: total_kv,
                         get_total_num_hidden_layers=lambda: layers)
    vc = SimpleNamespace(model_config=mc, cache_config=SimpleNamespace(kv_cache_layout=layout),
                         parallel_config=SimpleNamespace(tensor_parallel_size=tp,
                                                         pipeline_parallel_size=pp),
                         kv_transfer_config=SimpleNamespace(kv_load_failure_policy="fail"))
    kcc = SimpleNamespace(kv_cache_groups=[SimpleNamespace(kv_cache_spec=spec)],
                          kv_cache_layout=layout)
    return vc, kcc


def cfg(root: Path, **kw):
    from yrcache.integrations.vllm.config import ConnectorConfig
    return ConnectorConfig(**{"root": str(root), "chunk_tokens": CHUNK, "staging_bytes": 8 << 20,
                              **kw})


# -- config ----------------------------------------------------------------------------------------
def test_config_extra_env_and_errors(tmp_path: Path) -> None:
    from yrcache.integrations.vllm.config import ConnectorConfig
    c = ConnectorConfig.from_extra({"root": str(tmp_path), "mode": "sync", "chunk_tokens": 512},
                                   environ={"YRCACHE_MODE": "async", "YRCACHE_SALT": "t1"})
    assert (c.mode, c.chunk_tokens, c.salt, c.root) == ("async", 512, "t1", str(tmp_path))
    with pytest.raises(ValueError, match="unknown kv_connector_extra_config keys.*'roots'"):
        ConnectorConfig.from_extra({"roots": "/x"}, environ={})
    with pytest.raises(ValueError, match="'root'.*YRCACHE_ROOT"):
        ConnectorConfig.from_extra({}, environ={})
    with pytest.raises(ValueError, match="YRCACHE_CHUNK_TOKENS='lots' is invalid"):
        ConnectorConfig.from_extra({"root": "/x"}, environ={"YRCACHE_CHUNK_TOKENS": "lots"})
    with pytest.raises(ValueError, match="mode must be"):
        ConnectorConfig.from_extra({"root": "/x", "mode": "fast"}, environ={})


# -- namespaces ------------------------------------------------------------------------------------
def test_namespaces_per_rank(tmp_path: Path) -> None:
    from yrcache.integrations.vllm import spaces
    vc, kcc = fake_config(tp=2, total_kv=4)
    dep = spaces.derive(vc, kcc, cfg(tmp_path, chunk_tokens=40))
    assert dep.chunk_tokens == 48                      # rounded up to whole blocks
    a, b = dep.space(0, 0), dep.space(1, 0)
    assert (a.ns.first_kv_head, b.ns.first_kv_head) == (0, 2) and a.ns != b.ns
    assert a.writer and b.writer and len(dep.unique) == 2
    assert a.ns.layout == "vllm-cpu-LBHNC" and a.ns.model == "/models/m@r1"
    # KV heads replicated over 4 ranks (2 heads): ranks 0/1 and 2/3 hold the same KV, one writes
    vc, kcc = fake_config(tp=4, total_kv=2)
    dep = spaces.derive(vc, kcc, cfg(tmp_path))
    assert [s.writer for s in dep.spaces] == [True, False, True, False]
    assert len(dep.unique) == 2
    # pipeline stages: layer ranges in the namespace
    vc, kcc = fake_config(pp=2)
    dep = spaces.derive(vc, kcc, cfg(tmp_path))
    assert [(s.ns.first_layer, s.ns.num_layers) for s in dep.spaces] == [(0, 2), (2, 2)]
    # the salt separates tenants
    d1 = spaces.derive(*fake_config(), cfg(tmp_path, salt="a"))
    d2 = spaces.derive(*fake_config(), cfg(tmp_path, salt="b"))
    assert d1.unique[0].digest != d2.unique[0].digest


def test_mla_is_stored_once_and_unsupported_models_are_refused(tmp_path: Path) -> None:
    from vllm.v1.kv_cache_interface import MLAAttentionSpec, SlidingWindowSpec

    from yrcache.integrations.vllm import spaces
    vc, kcc = fake_config(tp=2)
    kcc.kv_cache_groups[0].kv_cache_spec = MLAAttentionSpec(block_size=BT, num_kv_heads=1,
                                                            head_size=72, dtype=torch.bfloat16)
    dep = spaces.derive(vc, kcc, cfg(tmp_path))
    assert dep.mla and len(dep.unique) == 1 and [s.writer for s in dep.spaces] == [True, False]
    vc, kcc = fake_config()
    kcc.kv_cache_groups = kcc.kv_cache_groups * 2
    with pytest.raises(ValueError, match="2 KV-cache groups"):
        spaces.derive(vc, kcc, cfg(tmp_path))
    vc, kcc = fake_config()
    kcc.kv_cache_groups[0].kv_cache_spec = SlidingWindowSpec(
        block_size=BT, num_kv_heads=2, head_size=HS, dtype=torch.bfloat16, sliding_window=64)
    with pytest.raises(ValueError, match="not full attention"):
        spaces.derive(vc, kcc, cfg(tmp_path))
    with pytest.raises(ValueError, match="LHBNC does not keep"):
        spaces.derive(*fake_config(layout="LHBNC"), cfg(tmp_path))


# -- worker side -----------------------------------------------------------------------------------
def names() -> list[str]:
    return [f"model.layers.{i}.self_attn.attn" for i in range(L)]


def kv_tensors(blocks: int = 32, heads: int = HEADS, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randint(-2**15, 2**15, (blocks, heads, BT, 2 * HS), dtype=torch.int16,
                             generator=g).view(torch.bfloat16) for n in names()}


def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tp: int = 1, **kw):
    from yrcache.integrations.vllm import compat, spaces
    from yrcache.integrations.vllm.worker import WorkerSide
    monkeypatch.setattr(compat, "parallel_ranks", lambda: (0, tp, 0, 1))
    # these workers load what they stored themselves, from the files: no host tier in between
    c = cfg(tmp_path / "root", **{"host_tier_bytes": 0, **kw})
    dep = spaces.derive(*fake_config(tp=tp, total_kv=HEADS * tp), c)
    return WorkerSide(None, c, dep), dep


def store_op(dep, tokens_seed: int, blocks: list[int], rid: str = "r1"):
    import numpy as np

    from yrcache.integrations.vllm.metadata import StoreOp
    from yrcache.store.keys import chain_keys
    ns = dep.unique[0]
    toks = np.random.default_rng(tokens_seed).integers(0, 1000, CHUNK * (len(blocks) // PER))
    keys = chain_keys(ns.digest, toks, CHUNK)
    return StoreOp(rid, {ns.hex: keys}, {ns.hex: ns.digest}, 0, blocks), keys


def run_step(w, meta, *, layers: bool = True) -> None:
    w.bind(meta)
    w.start_load()
    for n in names():
        w.wait_for_layer_load(n)
        if layers:
            w.save_layer(n)
    w.wait_for_save()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_worker_layer_wait_returns_before_later_layers_load(
        tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from yrcache.integrations.vllm.metadata import LoadOp, YRCacheMetadata
    w, dep = worker(tmp_path, monkeypatch, mode=mode)
    kv = kv_tensors()
    w.register(kv)
    assert not w.disabled and w.cache is not None
    src = [3, 9, 4, 20, 7, 1]
    op, keys = store_op(dep, 1, src)
    run_step(w, YRCacheMetadata(stores=[op]))
    w.cache.store_.flush()
    meta = w.worker_meta()
    assert meta is not None and meta.published[dep.unique[0].hex] == keys
    # load into other blocks; block 11 is already held by the engine (-1: left alone)
    dst = [11, 12, 13, 14, 15, 16]
    ids = [-1, 12, 13, 14, 15, 16]
    before = {n: t.clone() for n, t in kv.items()}
    gate = threading.Event()
    if mode == "async":   # the file system holds back the reads of every layer but the first
        from yrcache.futures import Future
        real = w.cache.store_.get

        def slow(key, bufs, *, layers=None, **k):
            if layers == [0]:
                return real(key, bufs, layers=layers, **k)
            f = Future(what="slow get")

            def later() -> None:
                gate.wait(30)
                real(key, bufs, layers=layers, **k).add_done_callback(
                    lambda g: f.set_result(g.result()))
            threading.Thread(target=later, daemon=True).start()
            return f
        monkeypatch.setattr(w.cache.store_, "get", slow)
    w.bind(YRCacheMetadata(loads=[LoadOp("r2", {dep.unique[0].hex: keys}, 0, ids, False)]))
    w.start_load()
    (ld,) = w._step_loads
    t0 = time.monotonic()
    w.wait_for_layer_load(names()[0])
    if mode == "async":
        assert time.monotonic() - t0 < 20
        assert ld.lf.layer(0).done() and not ld.lf.layer(1).done()   # layer 0 computes now
        assert not ld.lf.layer(L - 1).done()
        gate.set()
    for n in names()[1:]:
        w.wait_for_layer_load(n)
    w.wait_for_save()
    assert w.load_errors() == set()
    for n in names():
        assert torch.equal(kv[n][dst[1:]].view(torch.int16), before[n][src[1:]].view(torch.int16))
        assert torch.equal(kv[n][11].view(torch.int16), before[n][11].view(torch.int16))
    w.shutdown()


def test_worker_load_failure_reports_blocks_and_drops_that_requests_stores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from yrcache.integrations.vllm.metadata import LoadOp, YRCacheMetadata
    w, dep = worker(tmp_path, monkeypatch)
    kv = kv_tensors()
    w.register(kv)
    op, keys = store_op(dep, 2, [1, 2, 3, 4])
    run_step(w, YRCacheMetadata(stores=[op]))
    w.cache.store_.flush()
    w.worker_meta()
    h = dep.unique[0].hex
    missing = keys[:1] + [bytes(16)]          # chunk 1 does not exist
    new, new_keys = store_op(dep, 3, [20, 21], rid="r9")
    run_step(w, YRCacheMetadata(loads=[LoadOp("r9", {h: missing}, 0, [5, 6, 7, 8], False)],
                                stores=[new]))
    assert w.load_errors() == {7, 8}
    meta = w.worker_meta()
    assert meta.load_failed == {"r9": 1}
    # the KV r9 computed this step attended to blocks that failed: never stored
    assert meta.unpublished[h] == new_keys and not w.cache.store_.exists(new_keys[0])
    w.shutdown()


def test_multi_rank_stores_of_a_step_with_loads_wait_for_every_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TP=2: rank 1's load may fail while rank 0's succeeds, and the all-reduce would carry the
    damage into rank 0's new KV; so rank 0 publishes that step's stores only once the scheduler
    has seen both ranks' reports (settled clean), and drops them otherwise."""
    from yrcache.integrations.vllm.metadata import LoadOp, YRCacheMetadata
    w, dep = worker(tmp_path, monkeypatch, tp=2)
    w.register(kv_tensors())
    h = w.hex
    op, keys = store_op(dep, 5, [1, 2])
    run_step(w, YRCacheMetadata(stores=[op], step=1))        # no loads: published at once
    w.cache.store_.flush()
    assert w.worker_meta().published[h] == keys
    for step, clean in ((2, True), (3, False)):
        op2, keys2 = store_op(dep, 10 + step, [3, 4], rid=f"r{step}")
        load = LoadOp("x", {h: keys}, 0, [5, 6], False)
        run_step(w, YRCacheMetadata(loads=[load], stores=[op2], step=step))
        assert w.load_errors() == set()
        meta = w.worker_meta()
        assert meta.loaded_steps == {step} and not meta.published   # held
        w.bind(YRCacheMetadata(step=step + 1, settled={step: clean}))
        w.wait_for_save()
        w.cache.store_.flush()
        meta = w.worker_meta()
        if clean:
            assert meta.published[h] == keys2 and w.cache.store_.exists(keys2[0])
        else:
            assert meta.unpublished[h] == keys2 and not w.cache.store_.exists(keys2[0])
    w.shutdown()


def test_parked_load_that_cannot_start_is_still_reported(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from yrcache.integrations.vllm.metadata import LoadOp, YRCacheMetadata
    w, dep = worker(tmp_path, monkeypatch)
    w.register(kv_tensors(heads=HEADS + 1))      # disabled
    run_step(w, YRCacheMetadata(loads=[LoadOp("p", {w.hex: [bytes(16)]}, 0, [4, 5], True)]))
    sending, recving = w.get_finished(set())
    assert recving == {"p"} and w.load_errors() == {4, 5}   # vLLM un-parks it and recomputes


def test_register_on_an_unusable_root_fails_or_disables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "root").write_bytes(b"a file")
    w, _ = worker(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match=f"root {str(tmp_path / 'root')!r} could not be set up"
                       r".*on_bad_root='serve'"):
        w.register(kv_tensors())                      # the default: vLLM's start-up fails
    w, _ = worker(tmp_path, monkeypatch, on_bad_root="serve")
    with caplog.at_level(logging.ERROR, logger="yrcache.vllm"):
        w.register(kv_tensors())
    assert w.cache is None and str(tmp_path / "root") in w.disabled
    assert [r.getMessage() for r in caplog.records if r.name.startswith("yrcache")] == [
        f"yrcache: connector DISABLED on this worker: {w.disabled}"]
    assert (tmp_path / "root").read_bytes() == b"a file"


def test_register_mismatch_disables_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    from yrcache.integrations.vllm.metadata import LoadOp, YRCacheMetadata
    w, dep = worker(tmp_path, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="yrcache.vllm"):
        w.register(kv_tensors(heads=HEADS + 1))       # pages of another geometry
    assert w.cache is None and "pages" in w.disabled
    assert any("DISABLED" in r.getMessage() for r in caplog.records)
    run_step(w, YRCacheMetadata(loads=[LoadOp("r", {dep.unique[0].hex: [bytes(16)]}, 0,
                                              [4, 5], False)]))
    assert w.load_errors() == {4, 5}                  # vLLM recomputes what it planned to load
    assert w.worker_meta().disabled
    transposed = {n: t.transpose(1, 2) for n, t in kv_tensors().items()}
    for bad, match in [(transposed, "contiguous|shape"),
                       ({n: t.float() for n, t in kv_tensors().items()}, "float32"),
                       (dict(list(kv_tensors().items())[:3]), "3 KV layers")]:
        w2, _ = worker(tmp_path, monkeypatch)
        w2.register(bad)
        assert w2.cache is None and w2.disabled
        import re
        assert re.search(match, w2.disabled), w2.disabled


# -- scheduler side --------------------------------------------------------------------------------
def fake_request(rid: str, tokens: list[int], **kw) -> SimpleNamespace:
    d = dict(request_id=rid, prompt_token_ids=tokens, all_token_ids=tokens,
             num_tokens=len(tokens), cache_salt=None, lora_request=None, mm_features=[],
             prompt_embeds=None)
    d.update(kw)
    return SimpleNamespace(**d)


def scheduler(tmp_path: Path, role: str = "kv_both", **kw):
    from yrcache.integrations.vllm import spaces
    from yrcache.integrations.vllm.scheduler import SchedulerSide
    c = cfg(kw.pop("root", tmp_path / "root"), **kw)
    vc, kcc = fake_config()
    return SchedulerSide(vc, c, spaces.derive(vc, kcc, c), role=role)


def test_scheduler_defers_a_slow_lookup_instead_of_stalling(tmp_path: Path) -> None:
    import numpy as np
    s = scheduler(tmp_path, lookup_wait_ms=5)
    ns = s.nss[0]
    store = s.stores[ns.hex]
    toks = list(range(CHUNK * 3 + 5))
    from yrcache.store.keys import chain_keys
    for i, k in enumerate(chain_keys(ns.digest, toks, CHUNK)):
        segs = [np.zeros(PER * ns.page_bytes, np.uint8) for _ in range(L)]
        assert store.put(k, segs, parent=ns.digest if i == 0 else
                         chain_keys(ns.digest, toks, CHUNK)[i - 1], chunk_index=i,
                         token_count=CHUNK, dtype="bfloat16",
                         shape=[PER * ns.page_bytes]).result(timeout=30)
    gate = threading.Event()
    real = store.lookup
    store.lookup = lambda keys: (gate.wait(30), real(keys))[1]   # a slow file system
    req = fake_request("a", toks)
    s.on_new_request(req)
    t0 = time.monotonic()
    assert s.get_num_new_matched_tokens(req, 0) == (None, False)     # ask again later
    assert time.monotonic() - t0 < 1.0
    gate.set()
    deadline = time.monotonic() + 10
    while (r := s.get_num_new_matched_tokens(req, 0))[0] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r == (CHUNK * 3, False)        # align_down(101 - 1, 16) = 96 = 3 chunks
    assert s.get_num_new_matched_tokens(req, 2 * BT) == (CHUNK * 3 - 2 * BT, False)
    s.shutdown()


def test_scheduler_unusable_root_fails_or_disables_and_read_only_root_only_loads(
        tmp_path: Path, ro_bind, caplog: pytest.LogCaptureFixture) -> None:
    from yrcache.integrations.vllm.metadata import YRCacheMetadata
    (tmp_path / "root").write_bytes(b"a file")
    with pytest.raises(ValueError, match=f"cache root {str(tmp_path / 'root')!r} is unusable: "
                       r".*not a directory.*on_bad_root='serve'"):
        scheduler(tmp_path)                # the default: vLLM's start-up fails, saying why
    with caplog.at_level(logging.ERROR, logger="yrcache.vllm"):
        s = scheduler(tmp_path, on_bad_root="serve")   # vLLM serves on without the cache
    assert str(tmp_path / "root") in s.disabled and not s.stores
    assert [r.message for r in caplog.records].count(
        f"yrcache: connector DISABLED: {s.disabled}") == 1
    req = fake_request("a", list(range(CHUNK * 3)))
    s.on_new_request(req)
    assert s.get_num_new_matched_tokens(req, 0) == (0, False)
    s.shutdown()
    (tmp_path / "root").unlink()
    (tmp_path / "ro").mkdir()
    ro = ro_bind(tmp_path / "ro")
    for root, load_only in ((tmp_path / "ro", False), (ro, True)):   # writable: the control
        s = scheduler(tmp_path, root=str(root))
        assert not s.disabled and s.load_only == load_only
        s.bind_kv_cache_manager(object())
        s.on_new_request(req)
        meta = YRCacheMetadata()
        with pytest.MonkeyPatch.context() as mp:
            from yrcache.integrations.vllm import compat
            mp.setattr(compat, "manager_block_ids", lambda kvm, rid: list(range(3 * PER)))
            s._plan_store("a", 0, CHUNK * 3, meta)
        assert len(meta.stores) == (0 if load_only else 1)
        s.shutdown()
    with pytest.raises(ValueError, match="is not writable and kv_role is kv_producer"):
        scheduler(tmp_path, "kv_producer", root=ro)   # a producer that could store nothing
    scheduler(tmp_path, "kv_consumer", root=ro).shutdown()


def test_scheduler_refuses_inputs_it_cannot_fingerprint_and_folds_the_rest(tmp_path: Path) -> None:
    s = scheduler(tmp_path)
    toks = list(range(CHUNK * 2 + 3))
    emb = fake_request("e", toks, prompt_embeds=object())
    s.on_new_request(emb)
    assert s.get_num_new_matched_tokens(emb, 0) == (0, False)
    roots = set()
    for rid, kw in [("p", {}), ("s", {"cache_salt": "x"}),
                    ("l", {"lora_request": SimpleNamespace(lora_name="a", lora_path="/a")}),
                    ("m", {"mm_features": [SimpleNamespace(
                        modality="image", identifier="h1",
                        mm_position=SimpleNamespace(offset=3, length=10))]})]:
        r = fake_request(rid, toks, **kw)
        s.on_new_request(r)
        roots.add(s._reqs[rid].roots[s.nss[0].hex])
    assert len(roots) == 4                # each input changes every key of the chain
    s.shutdown()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_request_finished_delays_only_while_gathers_may_be_pending(
        tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from yrcache.integrations.vllm import compat
    from yrcache.integrations.vllm.metadata import YRCacheWorkerMeta
    monkeypatch.setattr(compat, "device_type", lambda: device)
    s = scheduler(tmp_path)
    kvm = SimpleNamespace(get_block_ids=lambda rid: (list(range(64)),))
    s.bind_kv_cache_manager(kvm)
    toks = list(range(CHUNK * 2 + 3))

    def step(rid: str):
        req = fake_request(rid, toks)
        s.on_new_request(req)
        so = SimpleNamespace(scheduled_new_reqs=[SimpleNamespace(req_id=rid,
                                                                 num_computed_tokens=0)],
                             scheduled_cached_reqs=SimpleNamespace(req_ids=[],
                                                                    num_computed_tokens=[]),
                             num_scheduled_tokens={rid: len(toks)}, preempted_req_ids=set())
        meta = s.build_connector_meta(so)
        assert [op.req_id for op in meta.stores] == [rid] and meta.stores[0].block_ids == \
            list(range(2 * PER))
        metas.append(meta)
        return req

    metas: list = []

    # CPU workers gather synchronously: blocks are released at once. CUDA: gathers run after the
    # step, so from the very first step (before any worker report) a stored request is delayed
    s.update_connector_output(SimpleNamespace(kv_connector_worker_meta=YRCacheWorkerMeta()))
    assert s.request_finished(step("a"), []) == (device == "cuda", None)
    # a worker whose gathers complete after the step (GPU copy streams)
    s.update_connector_output(SimpleNamespace(
        kv_connector_worker_meta=YRCacheWorkerMeta(async_gathers=True)))
    assert s.request_finished(step("b"), []) == (True, None)
    so = SimpleNamespace(scheduled_new_reqs=[], num_scheduled_tokens={}, preempted_req_ids=set(),
                         scheduled_cached_reqs=SimpleNamespace(req_ids=[],
                                                               num_computed_tokens=[]))
    assert metas[-1].delayed == (["a"] if device == "cuda" else [])
    # a request aborted while its parked load runs: vLLM holds its blocks until the load reports
    # (finished_recving); delaying it as well would free them twice
    rc = step("c")
    s._reqs["c"].parked_inflight = True   # what update_state_after_alloc sets for a parked load
    s.update_connector_output(SimpleNamespace(finished_recving={"x"},
                                              kv_connector_worker_meta=None))
    assert s.request_finished(rc, []) == (False, None)
    rd = step("d")
    s._reqs["d"].parked_inflight = True
    s.update_connector_output(SimpleNamespace(finished_recving={"d"},
                                              kv_connector_worker_meta=None))
    assert s.request_finished(rd, []) == (True, None)     # a worker reported async gathers
    assert metas[-2].delayed == ["b"]                     # built in step c
    assert s.build_connector_meta(so).delayed == ["d"]    # the worker reports it when done
    s.shutdown()
