# SPDX-License-Identifier: Apache-2.0
"""The GPU data path.

Runs everywhere: the CUDA code is compiled into the extension for every default arch (read back
with cuobjdump), CUDA calls without a device raise CudaUnavailableError saying why, and the cuFile
shim loads the real libcufile (nvidia-cufile wheel), resolves its symbols and refuses to open the
driver without a device. Marked ``cuda`` (skip without a GPU, also in CI): gather/scatter against
the CPU reference, stream ordering, CUDA error names, the device file I/O ladder, the Cache and the
vLLM worker hooks on CUDA tensors.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import yrcache
from yrcache._native import _C
from yrcache.cache.copy import gather_paged, scatter_paged
from yrcache.cuda import copy as cuda_copy
from yrcache.cuda import gds
from yrcache.errors import CudaError, CudaUnavailableError
from yrcache.io.engine import HostBuffer
from yrcache.tensors import paged_geometry

from .helpers import REPO, require

HAVE_GPU, WHY = cuda_copy.status()
gpu = pytest.mark.skipif(not HAVE_GPU, reason=f"needs a CUDA device: {WHY}")


def _child(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.getcwd(),
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


def _cuobjdump() -> str | None:
    import glob
    import importlib.util
    spec = importlib.util.find_spec("nvidia")
    wheels = [p for r in (spec.submodule_search_locations or []) if spec
              for p in glob.glob(os.path.join(r, "*", "bin", "cuobjdump"))] if spec else []
    for c in (shutil.which("cuobjdump"), "/usr/local/cuda/bin/cuobjdump", *wheels):
        if c and os.access(c, os.X_OK):
            return c
    return None


# -- everywhere ----------------------------------------------------------------------------------
def test_kernels_compiled_for_every_default_arch() -> None:
    info = yrcache.build_info()
    require(info["cuda"]["compiled"], "CUDA not compiled into this build (nvcc missing?)")
    tool = _cuobjdump()
    require(tool is not None, "cuobjdump not found (CUDA toolkit or pip install "
            "nvidia-cuda-cuobjdump)")
    so = _C.__file__
    elfs = subprocess.run([tool, "--list-elf", so], capture_output=True, text=True, check=True)
    archs = set(re.findall(r"sm_(\d+)", elfs.stdout))
    want = {a.split("-")[0] for a in info["cuda"]["archs"].split(";")}
    assert want <= archs, f"cubins for {sorted(archs)}, the build asked for {sorted(want)}"
    ptx = subprocess.run([tool, "--list-ptx", so], capture_output=True, text=True, check=True)
    assert "sm_90" in ptx.stdout, "no PTX for newer GPUs"
    syms = subprocess.run([tool, "--dump-resource-usage", so], capture_output=True, text=True,
                          check=True).stdout
    assert "copy_pages" in syms, "the gather/scatter kernel is not in the fatbin"


def test_without_a_device_cuda_calls_say_why() -> None:
    if HAVE_GPU:
        assert _C.cuda.require_device(0) >= 1
        return
    for call in (lambda: cuda_copy.require(0), lambda: _C.cuda.Copier(0),
                 lambda: cuda_copy.pin(HostBuffer(4096)), lambda: gds.DeviceFileIO(0)):
        with pytest.raises(CudaUnavailableError, match=r"CUDA|cuda") as e:
            call()
        assert "cudaError" in str(e.value) or "not compiled" in str(e.value)
    assert issubclass(CudaUnavailableError, RuntimeError) and issubclass(CudaError, RuntimeError)


def test_cache_refuses_cuda_tensors_without_a_device(tmp_path: Path) -> None:
    """A tensor that says it is on cuda:0 reaches the device check (not a generic error)."""
    if HAVE_GPU:   # not applicable: test_cache_round_trip_cuda_tensors covers real ones
        assert cuda_copy.available()
        return
    from yrcache.cache.cache import Cache
    from yrcache.cache.layout import KVLayout
    lay = KVLayout.paged("t", num_layers=2, dtype="uint8", kv_heads=1, head_size=8,
                         block_tokens=4, page_bytes=4096)
    host = np.zeros((8, 4096), np.uint8)

    class FakeCudaTensor:   # the attributes Cache reads of a torch tensor
        shape, device, dtype = host.shape, type("D", (), {"type": "cuda", "index": 0})(), "uint8"

        def data_ptr(self) -> int:
            return host.ctypes.data

        def element_size(self) -> int:
            return 1

        def stride(self) -> tuple[int, ...]:
            return (4096, 1)

    with Cache(tmp_path, lay.namespace("m", chunk_tokens=8), lay, staging_bytes=1 << 20,
               janitor_period=0) as c:
        with pytest.raises(CudaUnavailableError):
            c.store(np.arange(8), [FakeCudaTensor()] * 2, np.arange(2))
        assert c.stats()["stores"] == 0


def _cufile_lib() -> str | None:
    libs = [p for p in gds.cufile_candidates() if os.path.isabs(p) and os.path.exists(p)]
    return libs[0] if libs else None


def test_cufile_shim_loads_the_real_library() -> None:
    lib = _cufile_lib()
    require(lib is not None, "libcufile not found: pip install nvidia-cufile")
    r = _child("import json; from yrcache._native import _C; "
               f"print(json.dumps(_C.gds.open(['/nonexistent/libcufile.so.0', {lib!r}])))",
               CUFILE_LOGFILE_PATH=os.devnull)
    assert r.returncode == 0, r.stderr
    import json
    st = json.loads(r.stdout.strip().splitlines()[-1])
    assert st["library"] == lib, st           # dlopen found it after a missing candidate
    assert st["version"] >= 1000, st          # cuFileGetVersion resolved and answered
    if HAVE_GPU:
        assert st["ok"] or "cuFileDriverOpen failed" in st["reason"], st
    else:   # never touches the driver without a device (it can block forever then)
        assert not st["ok"] and "cuFileDriverOpen not tried" in st["reason"], st


def test_cufile_missing_library_is_a_reason_not_a_crash() -> None:
    r = _child("import json; from yrcache._native import _C; "
               "print(json.dumps(_C.gds.open(['/nonexistent/libcufile.so.0'])))")
    assert r.returncode == 0, r.stderr
    assert "libcufile not loadable" in r.stdout and "/nonexistent/libcufile.so.0" in r.stdout


def test_io_engine_points_cufile_users_to_the_device_ladder() -> None:
    with pytest.raises(yrcache.BackendUnavailableError, match="DeviceFileIO"):
        yrcache.IoEngine("cufile")


def test_device_io_ladder_decision_is_logged_with_its_reason() -> None:
    r = _child("import logging; logging.basicConfig(level=logging.INFO)\n"
               "from yrcache.cuda import gds\nprint(gds.decide('auto'))\nprint(gds.decide('auto'))")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("device file I/O uses") == 1, r.stderr   # decided once, logged once
    first = r.stdout.strip().splitlines()[0]
    assert any(b in first for b in gds.BACKENDS)
    if not HAVE_GPU:
        assert "cuFile unusable" in first
    with pytest.raises(ValueError, match="prefer must be"):
        gds.decide("nvme")


# -- on a GPU --------------------------------------------------------------------------------------
torch = pytest.importorskip("torch") if HAVE_GPU else None


def _pinned(nbytes: int) -> tuple[HostBuffer, np.ndarray]:
    b = HostBuffer(nbytes)
    cuda_copy.pin(b)
    return b, np.frombuffer(b, np.uint8)


@gpu
@pytest.mark.cuda
@pytest.mark.parametrize("method", cuda_copy.METHODS)
@pytest.mark.parametrize("page,stride_pad", [(65536, 0), (32768, 4096), (4098, 2), (24, 0)])
def test_gather_scatter_bit_exact_against_cpu(method: str, page: int, stride_pad: int) -> None:
    rng = np.random.default_rng(page + stride_pad)
    nb = 300
    c = _C.cuda.Copier(0, 1 << 20, method)   # small staging: several pieces per op
    raw = torch.randint(0, 256, (nb, page + stride_pad), dtype=torch.uint8, device="cuda")
    layer = raw[:, :page]                   # blocks `page` long, `page + pad` apart
    ids = rng.choice(nb, size=200, replace=False).astype(np.int64)
    buf, host = _pinned(200 * page)
    host[:] = 0xAB                            # poison
    base, _, _, stride = paged_geometry(layer, allow_cuda=True)
    torch.cuda.synchronize()   # the copier's streams are not ordered after torch's
    c.gather_paged(base, nb, page, stride, ids, buf).synchronize()
    ref = np.empty(200 * page, np.uint8)
    gather_paged(layer.cpu().numpy(), ids, ref)
    assert np.array_equal(host, ref)
    # scatter into a poisoned copy: exactly the id'd blocks change, to the CPU reference's bytes
    dst = torch.full_like(raw, 0x5A)
    dlayer = dst[:, :page]
    src = rng.integers(0, 256, 200 * page, dtype=np.uint8)
    host[:] = src
    torch.cuda.synchronize()
    c.scatter_paged(dlayer.data_ptr(), nb, page, stride, ids, buf).synchronize()
    want = np.full((nb, page + stride_pad), 0x5A, np.uint8)
    scatter_paged(want[:, :page], ids, src)
    assert np.array_equal(dst.cpu().numpy(), want)


@gpu
@pytest.mark.cuda
def test_dense_bit_exact_against_cpu() -> None:
    from yrcache.cache.copy import gather_dense
    t = torch.randn(2, 8, 1000, 128, dtype=torch.bfloat16, device="cuda")
    view = t[:, :, :, :]                    # [batch, heads, seq, head_dim]
    buf, host = _pinned(8 * 256 * 128 * 2)
    host[:] = 0xCD
    cuda_copy.gather_dense(view, 300, 256, buf, batch=1, after_stream=torch.cuda.current_stream()) \
        .synchronize()
    ref = np.empty_like(host)
    gather_dense(t.cpu().view(torch.int16).numpy(), 300, 256, ref, batch=1)
    assert np.array_equal(host, ref)
    u = torch.zeros_like(t)
    cuda_copy.scatter_dense(u, 300, 256, buf, batch=1, after_stream=torch.cuda.current_stream()) \
        .synchronize()
    assert torch.equal(u[1, :, 300:556], t[1, :, 300:556])
    assert not u[0].any() and not u[1, :, :300].any() and not u[1, :, 556:].any()


@gpu
@pytest.mark.cuda
def test_store_gather_sees_what_the_compute_stream_just_wrote() -> None:
    s = torch.cuda.Stream()
    layer = torch.zeros(64, 16384, dtype=torch.uint8, device="cuda")
    ids = np.arange(0, 64, 2, dtype=np.int64)
    buf, host = _pinned(32 * 16384)
    with torch.cuda.stream(s):
        torch.cuda._sleep(200_000_000)      # ~0.1 s: the write below is still queued
        layer.fill_(7)
    ev = cuda_copy.gather_paged(layer, ids, buf, after_stream=s)
    ev.synchronize()
    assert (host == 7).all()                # not the zeros that were there when it was issued


@gpu
@pytest.mark.cuda
def test_load_event_gates_a_consumer_kernel_without_host_wait() -> None:
    compute, slow = torch.cuda.Stream(), torch.cuda.Stream()
    layer = torch.zeros(64, 16384, dtype=torch.uint8, device="cuda")
    ids = np.arange(10, 42, dtype=np.int64)
    buf, host = _pinned(32 * 16384)
    host[:] = 9
    with torch.cuda.stream(slow):
        torch.cuda._sleep(200_000_000)      # the load may only start after this
    gate = cuda_copy.copier(0).record(slow.cuda_stream)
    ev = cuda_copy.scatter_paged(layer, ids, buf, after_event=gate, signal=compute)
    with torch.cuda.stream(compute):        # enqueued at once: no host synchronization
        out = layer[10:42].clone()
    assert not ev.query()                   # the copy is still waiting behind `slow`
    assert ev.handle != 0 and ev.device == 0
    compute.synchronize()
    assert (out == 9).all()


@gpu
@pytest.mark.cuda
def test_cuda_errors_carry_the_cuda_error_name() -> None:
    b = HostBuffer(1 << 20)
    cuda_copy.pin(b)
    with pytest.raises(CudaError, match="cudaErrorHostMemoryAlreadyRegistered") as e:
        _C.cuda.host_register_range(b.address, 1 << 20)
    assert e.value.name == "cudaErrorHostMemoryAlreadyRegistered"
    with pytest.raises(ValueError, match="out of range"):
        _C.cuda.Copier(0).gather_paged(1 << 40, 4, 4096, 4096, np.array([5]), bytearray(4096))


@gpu
@pytest.mark.cuda
@pytest.mark.parametrize("prefer", ["auto", "cufile", "bounce-uring", "bounce-psync"])
def test_device_file_round_trip_every_rung(tmp_path: Path, prefer: str) -> None:
    n = (40 << 20) + 4096 * 3               # several bounce pieces, not a multiple of them
    a = torch.randint(0, 256, (n,), dtype=torch.uint8, device="cuda")
    b = torch.zeros_like(a)
    torch.cuda.synchronize()   # DeviceFileIO is not ordered with any stream
    with gds.DeviceFileIO(0, prefer=prefer, bounce_bytes=16 << 20) as io:
        if prefer.startswith("bounce"):
            ok = io.backend == prefer or (prefer == "bounce-uring" and "io_uring" in io.reason)
            assert ok, (io.backend, io.reason)
        assert io.write(tmp_path / "x", a.data_ptr(), n) == n
        assert io.read(tmp_path / "x", b.data_ptr(), n) == n
        print(prefer, "->", io.backend, io.reason)
    torch.cuda.synchronize()
    assert torch.equal(a, b)


def _paged_cache(root: Path, mode: str, L: int = 4):
    from yrcache.cache.cache import Cache
    from yrcache.cache.layout import KVLayout
    H, HS, BT = 8, 128, 16
    lay = KVLayout.paged("vllm-cuda-LBNHC", num_layers=L, dtype="bfloat16", kv_heads=H,
                         head_size=HS, block_tokens=BT, page_bytes=BT * H * 2 * HS * 2)
    return Cache(root, lay.namespace("m", chunk_tokens=64), lay, mode=mode,
                 staging_bytes=64 << 20, janitor_period=0)


def _flash_layers(L: int, nb: int = 64, H: int = 8, HS: int = 128, BT: int = 16):
    """Per layer, what vLLM 0.32 hands a connector for FlashAttention (layout LBNHC): the
    [blocks, heads, tokens, 2*head_size] view of a [blocks, tokens, heads, 2*head_size] buffer."""
    return [torch.randn(nb, BT, H, 2 * HS, dtype=torch.bfloat16, device="cuda").permute(0, 2, 1, 3)
            for _ in range(L)]


@gpu
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_cache_round_trip_cuda_tensors(tmp_path: Path, mode: str) -> None:
    L = 4
    src, dst = _flash_layers(L), [t.zero_() for t in _flash_layers(L)]
    toks = np.random.default_rng(1).integers(0, 1000, 64 * 3)
    sblocks, dblocks = np.arange(3, 15), np.arange(40, 52)
    with _paged_cache(tmp_path, mode, L) as c:
        f = c.store(toks, src, sblocks)
        f.source_released.result(30)
        assert f.result(30).stored == 3
        c.store_.flush()
        assert c.lookup(toks) == 64 * 3
        lf = c.load(toks, dst, dblocks)
        for i in range(L):
            lf.layer(i).result(30)
        assert lf.result(30).tokens == 64 * 3
        torch.cuda.current_stream().synchronize()
        for s, d in zip(src, dst):
            assert torch.equal(s[3:15], d[40:52])
            assert not d[:40].any() and not d[52:].any()


@gpu
@pytest.mark.cuda
def test_vllm_worker_hooks_on_cuda_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connector's worker side as vLLM 0.32 drives it on CUDA (FlashAttention tensors), with
    a compute stream writing each layer right before save_kv_layer and reading each loaded layer
    right after wait_for_layer_load. vLLM itself is not installed on the GPU machines."""
    from yrcache.cache.layout import KVLayout
    from yrcache.integrations.vllm import compat
    from yrcache.integrations.vllm.config import ConnectorConfig
    from yrcache.integrations.vllm.metadata import LoadOp, StoreOp, YRCacheMetadata
    from yrcache.integrations.vllm.spaces import Deployment, RankSpace
    from yrcache.integrations.vllm.worker import WorkerSide
    from yrcache.store.keys import chain_keys
    L, H, HS, BT, CH = 4, 8, 128, 16, 64
    monkeypatch.setattr(compat, "parallel_ranks", lambda: (0, 1, 0, 1))
    monkeypatch.setattr(compat, "layer_index", lambda n: int(n.split(".")[2]))
    lay = KVLayout.paged("vllm-cuda-LBNHC", num_layers=L, dtype="bfloat16", kv_heads=H,
                         head_size=HS, block_tokens=BT, page_bytes=BT * H * 2 * HS * 2)
    ns = lay.namespace("m", chunk_tokens=CH)
    dep = Deployment((RankSpace(0, 0, lay, ns, True),), BT, CH, False)
    cfg = ConnectorConfig(root=str(tmp_path), chunk_tokens=CH, staging_bytes=64 << 20)
    w = WorkerSide(None, cfg, dep)
    kv = _flash_layers(L)
    names = [f"model.layers.{i}.self_attn.attn" for i in range(L)]
    w.register(dict(zip(names, kv)))
    assert not w.disabled, w.disabled
    compute = torch.cuda.Stream()
    toks = np.random.default_rng(3).integers(0, 1000, CH * 2)
    keys = chain_keys(ns.digest, toks, CH)
    src = list(range(8, 16))
    want = []
    with torch.cuda.stream(compute):
        w.bind(YRCacheMetadata(stores=[StoreOp("r1", {ns.hex: keys}, {ns.hex: ns.digest}, 0, src)],
                               step=1))
        w.start_load()
        for i, n in enumerate(names):
            torch.cuda._sleep(20_000_000)                # the layer's attention, still running
            kv[i][src] = torch.randn_like(kv[i][src])    # ... writes the new KV
            w.save_layer(n)                              # gathers after it, on the copy stream
            want.append(kv[i][src].clone())
        w.wait_for_save()
    # r1 finished: vLLM keeps its blocks (delayed) until get_finished says no gather reads them
    w.bind(YRCacheMetadata(delayed=["r1"], step=2))
    sending = None
    for _ in range(200):
        sending, _ = w.get_finished(set())
        if sending:
            break
        threading.Event().wait(0.05)
    assert sending == {"r1"}
    with torch.cuda.stream(compute):
        for i in range(L):                               # now the engine may reuse them
            kv[i][src] = 0
    published: list[bytes] = []
    for _ in range(200):                                 # commits run on the commit thread
        meta = w.worker_meta()
        assert meta is not None and meta.async_gathers   # reported every step on CUDA
        published += meta.published.get(ns.hex, [])
        if published:
            break
        threading.Event().wait(0.05)
    assert published == keys
    dst = [-1] + list(range(41, 48))   # block 40's tokens are already in the engine: untouched
    held = [kv[i][40].clone() for i in range(L)]
    with torch.cuda.stream(compute):
        w.bind(YRCacheMetadata(loads=[LoadOp("r2", {ns.hex: keys}, 0, dst, False)], step=3))
        w.start_load()
        got = []
        for i, n in enumerate(names):
            w.wait_for_layer_load(n)
            got.append(kv[i][41:48].clone())             # a consumer on the compute stream
        w.wait_for_save()
    compute.synchronize()
    assert w.load_errors() == set()
    for i in range(L):
        assert torch.equal(got[i], want[i][1:]), f"layer {i}"
        assert torch.equal(kv[i][40], held[i])
    w.shutdown()



# -- the Cache's GPU orchestration, on any machine -----------------------------------------------
class _DeferredDevice:
    """Stands in for the device queue in the Cache's CUDA branch: a copy is only *recorded* when
    enqueued and runs when its event is synchronized (or at `drain`, like a stream synchronize),
    so code that touches the staging or the KV before waiting for the copy sees stale bytes. The
    bytes move with the CPU reference copy; files, verification and threads are all real."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[_DeferredDevice.Event] = []
        self.enqueued = 0

    class Event:
        def __init__(self, dev: _DeferredDevice, fn) -> None:
            self.dev, self.fn, self.done = dev, fn, fn is None

        def synchronize(self) -> None:
            with self.dev.lock:
                if not self.done:
                    time.sleep(0.01)   # a copy takes a while: waiting for it is not free
                    self.fn()
                    self.done = True

        def query(self) -> bool:
            return self.done

    def enqueue(self, fn) -> _DeferredDevice.Event:
        ev = self.Event(self, fn)
        with self.lock:
            self.pending.append(ev)
            self.enqueued += 1
        return ev

    def drain(self) -> None:
        for ev in list(self.pending):
            ev.synchronize()


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> _DeferredDevice:
    from yrcache.cache import copy as cpu_copy
    from yrcache.cuda import copy as cuda_copy
    dev = _DeferredDevice()
    fake = {
        "device_of": lambda t: 0,
        "require": lambda d=0: None,
        "pin": lambda buf, dev=0: None,
        "stream_handle": lambda s, d: 0,
        "copier": lambda d: type("Copier", (), {"method": "deferred",
                                                "record": lambda self, s: dev.enqueue(None)})(),
        "gather_paged": lambda layer, ids, dst, **kw: dev.enqueue(
            functools.partial(cpu_copy.gather_paged, layer, np.array(ids), dst)),
        "scatter_paged": lambda layer, ids, src, **kw: dev.enqueue(
            functools.partial(cpu_copy.scatter_paged, layer, np.array(ids), src)),
    }
    for name, fn in fake.items():   # the Cache reaches the device only through yrcache.cuda.copy
        monkeypatch.setattr(cuda_copy, name, fn)
    return dev


@pytest.mark.parametrize("mode,background", [("async", False), ("sync", False), ("async", True)])
def test_cache_gpu_orchestration_waits_for_copies(tmp_path: Path, mode: str, background: bool,
                                                  deferred: _DeferredDevice) -> None:
    """Stores publish only after their gathers ran (else verification would find the poisoned
    staging and the load below would miss); loads recycle a slab only after its scatter ran (else
    the KV would hold another chunk's bytes); a parked (background) load, which no stream waits
    for, completes only after its copies ran."""
    from yrcache.cache.cache import Cache
    from yrcache.cache.layout import KVLayout
    L, BT, PAGE, CH = 3, 16, 8192, 64
    lay = KVLayout.paged("deferred", num_layers=L, dtype="uint8", kv_heads=1, head_size=8,
                         block_tokens=BT, page_bytes=PAGE)
    rng = np.random.default_rng(5)
    src = [rng.integers(0, 256, (64, PAGE), dtype=np.uint8) for _ in range(L)]
    dst = [np.zeros((64, PAGE), np.uint8) for _ in range(L)]
    toks = rng.integers(0, 1000, CH * 4)
    sblocks = rng.choice(64, 16, replace=False)
    dblocks = rng.choice(64, 16, replace=False)
    obj = L * 4 * PAGE
    # two store slabs and six load slabs for the load's twelve segments: slabs are recycled
    # while the load runs, so a recycle before the scatter ran would show in the KV
    with Cache(tmp_path, lay.namespace("m", chunk_tokens=CH), lay, mode=mode, janitor_period=0,
               staging_bytes=4 * obj) as c:
        for n in (2, 4):
            f = c.store(toks[:CH * n], src, sblocks)
            r = f.result(30)
            assert f.source_released.done() and (r.stored, r.dropped) == (2, 0), r
            c.store_.flush()
        lf = c.load_chunks(c.keys(toks), dst, dblocks, background=background)
        assert lf.result(30).tokens == CH * 4
        if not background:
            deferred.drain()   # the caller's stream synchronize
        for s, d in zip(src, dst):
            assert np.array_equal(d[dblocks], s[sblocks])
        assert c.stats()["load_partial"] == 0
    assert deferred.enqueued >= 2 * L * 4


def test_gpu_check_is_well_formed(tmp_path: Path) -> None:
    """The GPU check is written here and run elsewhere: at least it parses, and without a device
    each benchmark phase writes its JSON with the reason instead of crashing."""
    assert subprocess.run(["bash", "-n", str(REPO / "bench/gpu_check.sh")]).returncode == 0
    r = _child("from yrcache.bench.gpu_bench import main; main(['--help'])")
    assert r.returncode == 0 and "copy,file,overlap,serve,all" in r.stdout, r.stderr
    if HAVE_GPU:
        return
    r = subprocess.run([sys.executable, "-m", "yrcache.bench.gpu_bench", "copy", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1, r.stdout + r.stderr
    import json
    doc = json.loads((tmp_path / "copy.json").read_text())
    assert doc["ok"] is False and "CUDA" in doc["error"], doc["error"]


def test_vllm_worker_releases_blocks_only_after_gathers(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        deferred: _DeferredDevice) -> None:
    """The worker's CUDA bookkeeping on the deferred device: a finished request's blocks go back
    to vLLM (get_finished) only once its gathers have run, and what is published is what the
    engine wrote before save_kv_layer, not what it wrote into the blocks afterwards."""
    torch = pytest.importorskip("torch")
    from yrcache.cache.layout import KVLayout
    from yrcache.integrations.vllm import compat
    from yrcache.integrations.vllm.config import ConnectorConfig
    from yrcache.integrations.vllm.metadata import StoreOp, YRCacheMetadata
    from yrcache.integrations.vllm.spaces import Deployment, RankSpace
    from yrcache.integrations.vllm.worker import WorkerSide
    from yrcache.store.keys import chain_keys
    L, H, HS, BT, CH = 3, 2, 16, 16, 32
    monkeypatch.setattr(compat, "parallel_ranks", lambda: (0, 1, 0, 1))
    monkeypatch.setattr(compat, "layer_index", lambda n: int(n.split(".")[2]))
    lay = KVLayout.paged("vllm-cuda-LBNHC", num_layers=L, dtype="bfloat16", kv_heads=H,
                         head_size=HS, block_tokens=BT, page_bytes=BT * H * 2 * HS * 2)
    ns = lay.namespace("m", chunk_tokens=CH)
    dep = Deployment((RankSpace(0, 0, lay, ns, True),), BT, CH, False)
    w = WorkerSide(None, ConnectorConfig(root=str(tmp_path), chunk_tokens=CH,
                                         staging_bytes=8 << 20), dep)
    kv = [torch.randn(32, BT, H, 2 * HS, dtype=torch.bfloat16).permute(0, 2, 1, 3)
          for _ in range(L)]
    names = [f"model.layers.{i}.self_attn.attn" for i in range(L)]
    w.register(dict(zip(names, kv)))
    assert not w.disabled, w.disabled
    w._async_gathers = True   # what CUDA tensors set at register (the tensors here are on CPU)
    keys = chain_keys(ns.digest, np.arange(CH * 2), CH)
    src = [4, 9, 2, 7]
    w.bind(YRCacheMetadata(stores=[StoreOp("r1", {ns.hex: keys}, {ns.hex: ns.digest}, 0, src)],
                           step=1))
    w.start_load()
    want = []
    for i, n in enumerate(names):
        w.save_layer(n)                  # enqueued: runs when the commit thread waits for it
        want.append(kv[i][src].clone())
    w.wait_for_save()
    w.bind(YRCacheMetadata(delayed=["r1"], step=2))
    assert w.get_finished(set()) == (None, None)   # the gathers have not run: blocks kept
    released = None
    for _ in range(400):
        released, _ = w.get_finished(set())
        if released:
            break
        time.sleep(0.01)
    assert released == {"r1"}
    for i in range(L):   # vLLM reuses the blocks now; the store must already hold the old KV
        kv[i][src] = 0
    published: list[bytes] = []
    for _ in range(400):
        meta = w.worker_meta()
        assert meta is not None and meta.async_gathers
        published += meta.published.get(ns.hex, [])
        if published:
            break
        time.sleep(0.01)
    assert published == keys
    out = [torch.zeros_like(t) for t in kv]
    lf = w.cache.load_chunks(keys, out, src)
    assert lf.result(30).tokens == CH * 2
    deferred.drain()
    for i in range(L):
        assert torch.equal(out[i][src], want[i]), f"layer {i}"
    w.shutdown()
