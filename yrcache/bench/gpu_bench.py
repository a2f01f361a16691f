# SPDX-License-Identifier: Apache-2.0
"""The GPU data path on a real card: copy engine, file path, overlap with compute, TTFT.

Phases (``all`` runs them in this order; each writes ``OUT/<phase>.json`` as soon as it ends, and
rewrites it with ``"partial": true`` after each step, so a later timeout still leaves results):

* **copy**: gather (D2H) and scatter (H2D) of N random distinct pages (64 MiB per op) of a paged
  layer tensor of 2N pages, for 16/32/64/128 KiB pages and each copy method (staged, mapped, dma),
  into/from a pinned HostBuffer. Baseline: ONE ``_C.cuda.memcpy`` of the same bytes between the
  same pinned buffer and a contiguous device buffer. Bit-exactness checked once per config.
* **file**: a paged Cache (32 layers, 64 KiB pages, 256-token chunks: 32 MiB objects) storing and
  loading ~1 GiB in sync mode from CUDA tensors vs from CPU tensors (the host O_DIRECT path, same
  Cache, same disk, interleaved), beside a re-measured D2H/H2D copy peak; then
  ``yrcache.cuda.gds.DeviceFileIO`` round trips (256 MiB) through each backend it can construct.
* **overlap**: a bf16 8192^3 matmul loop on the default stream alone vs with a background thread
  sustaining ``Copier.gather_paged`` offload (two ops in flight) of another tensor, per method.
* **serve**: TTFT of a random-weight Llama-3-8B shape (transformers, bf16, on the GPU) at 8K and
  32K prompt tokens: recompute (full prefill) vs sync load vs async (layer-wise) load of the whole
  prefix except the last chunk through a dense-layout Cache, then the last chunk's prefill.

Timings: time.perf_counter around synchronized work (CUDA events for the matmul loop), warm-up
first, medians of interleaved repetitions (A, B, A, B ...; the order rotates each repetition),
ratios computed from the same run.

    python -m yrcache.bench.gpu_bench all --out gpu_out
    python -m yrcache.bench.gpu_bench copy --quick
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from .common import fmt_size, format_table, git_sha, num, summarize

GB = 1e9
KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
PHASES = ("copy", "file", "overlap", "serve")
METHODS = ("staged", "mapped", "dma")
TARGET_COPY_RATIO = 0.9         # gather/scatter vs one contiguous memcpy, at 32-64 KiB pages
TARGET_FILE_RATIO = 0.9         # GPU path vs min(copy peak, host path)
TARGET_SLOWDOWN_PCT = 2.0       # matmul slowdown while offloading...
TARGET_OFFLOAD_FRACTION = 0.5   # ... at >= this fraction of the D2H peak

TIMING = ("perf_counter around synchronized work (each copy op ends with Event.synchronize or a "
          "stream synchronize; Cache ops with a device synchronize), CUDA events around the matmul "
          "loop; warm-up first; medians of interleaved repetitions whose order rotates; ratios "
          "from the same run")


class Terminated(BaseException):
    """SIGTERM (e.g. from `timeout`): record what we have, then stop."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum} (out of time?)")


# -- helpers -------------------------------------------------------------------------------------
_summ = functools.partial(summarize, median="median", min="min", max="max", n="n",
                          all="samples")


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _t(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rot(xs: list[Any], r: int) -> list[Any]:
    k = r % len(xs) if xs else 0
    return xs[k:] + xs[:k]


def _staging_bytes() -> int:
    return int(os.environ.get("YRCACHE_GPU_STAGING_MB", "16")) << 20


def _torch(dev: int) -> Any:
    """torch, after checking torch and yrcache both see CUDA device ``dev``."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device "
                           f"(torch.version.cuda={torch.version.cuda})")
    from yrcache.cuda import copy as G
    ok, why = G.status()
    if not ok:
        raise RuntimeError(f"yrcache's CUDA path is unusable: {why}")
    torch.cuda.set_device(dev)
    return torch


def env_info(dev: int, directory: str) -> dict[str, Any]:
    """Card, torch/CUDA versions, yrcache build; never raises."""
    info: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "python": sys.version.split()[0], "argv": sys.argv,
                            "hostname": os.uname().nodename,
                            "YRCACHE_GPU_COPY": os.environ.get("YRCACHE_GPU_COPY"),
                            "YRCACHE_GPU_STAGING_MB": os.environ.get("YRCACHE_GPU_STAGING_MB")}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(dev)
            info["card"] = torch.cuda.get_device_name(dev)
            info["capability"] = f"{p.major}.{p.minor}"
            info["sm_count"] = p.multi_processor_count
            info["device_memory_bytes"] = p.total_memory
        else:
            info["card"] = None
            info["cuda_unavailable"] = "torch.cuda.is_available() is False"
    except Exception as e:  # noqa: BLE001
        info["torch_error"] = f"{type(e).__name__}: {e}"
    try:
        import yrcache
        info["yrcache_version"] = yrcache.__version__
        info["build_info"] = yrcache.build_info(directory)
    except Exception as e:  # noqa: BLE001
        info["yrcache_error"] = f"{type(e).__name__}: {e}"
    info["git_sha"] = git_sha()
    return info


def _json_default(o: Any) -> Any:
    try:
        return o.item()   # numpy / torch scalars
    except Exception:  # noqa: BLE001 - anything else is written as its str()
        return str(o)


def write_json(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, default=_json_default)
    os.replace(tmp, path)


class Ctx:
    """What every phase gets: arguments, the deadline, its document and a save callback."""

    def __init__(self, a: argparse.Namespace, phase: str, env: dict[str, Any]) -> None:
        self.a, self.phase, self.dev, self.quick = a, phase, a.device, a.quick
        self.path = os.path.join(a.out, f"{phase}.json")
        self.doc: dict[str, Any] = {"schema": 1, "bench": "gpu", "phase": phase, "ok": None,
                                    "partial": True, "error": None, "env": env, "config": {},
                                    "results": {}, "headline": {}, "notes": [],
                                    "timing": TIMING, "quick": a.quick}
        self.t0 = time.monotonic()

    def left(self) -> float:
        """Seconds until the run's deadline (--budget from the start of the process)."""
        return self.a.deadline - time.monotonic()

    def note(self, msg: str) -> None:
        self.doc["notes"].append(msg)
        print(f"note [{self.phase}]: {msg}", file=sys.stderr, flush=True)

    def save(self) -> None:
        self.doc["elapsed_s"] = round(time.monotonic() - self.t0, 2)
        write_json(self.path, self.doc)


def _copy_peak(torch: Any, dev: int, nbytes: int, reps: int) -> dict[str, Any]:
    """D2H and H2D GB/s of one _C.cuda.memcpy of nbytes between pinned host and device memory."""
    from yrcache.cuda import copy as G
    from yrcache._native import _C
    from yrcache.io.engine import HostBuffer
    host = HostBuffer(nbytes)
    G.pin(host)
    flat = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=f"cuda:{dev}")
    torch.cuda.synchronize(dev)
    d2h = functools.partial(_C.cuda.memcpy, host.address, flat.data_ptr(), nbytes, 1, 0)
    h2d = functools.partial(_C.cuda.memcpy, flat.data_ptr(), host.address, nbytes, 0, 0)
    d2h()
    h2d()
    s: dict[str, list[float]] = {"d2h": [], "h2d": []}
    for _ in range(reps):
        s["d2h"].append(nbytes / _t(d2h) / GB)
        s["h2d"].append(nbytes / _t(h2d) / GB)
    return {"bytes": nbytes, "d2h": _summ(s["d2h"]), "h2d": _summ(s["h2d"])}


def _sync_call(fn: Callable[..., Any], *args: Any) -> None:
    """Enqueue a copier op and wait for its completion event."""
    fn(*args).synchronize()


# -- phase 1: copy -------------------------------------------------------------------------------
def phase_copy(c: Ctx) -> None:
    torch = _torch(c.dev)
    from yrcache.cuda import copy as G
    from yrcache._native import _C
    from yrcache.io.engine import HostBuffer
    dev = c.dev
    dv = f"cuda:{dev}"
    total = (16 if c.quick else 64) * MIB
    reps = 5 if c.quick else 9
    pages = [p * KIB for p in (16, 32, 64, 128)]
    staging = _staging_bytes()
    c.doc["config"] = {"bytes_per_op": total, "pages": pages, "methods": list(METHODS),
                       "reps": reps, "device_staging_bytes": staging,
                       "layer": "uint8 [2N, page] on the device, N = bytes_per_op / page; ids: N "
                                "random distinct blocks (numpy default_rng(1)), unsorted",
                       "baseline": "one _C.cuda.memcpy (cudaMemcpyAsync + stream sync, legacy "
                                   "stream) of the same bytes, same pinned HostBuffer <-> a "
                                   "contiguous device buffer",
                       "target_ratio": TARGET_COPY_RATIO}
    cp = _C.cuda.Copier(dev, staging, "staged")
    host = HostBuffer(total)
    G.pin(host)
    hv = np.frombuffer(memoryview(host), np.uint8, count=total)
    flat = torch.randint(0, 256, (total,), dtype=torch.uint8, device=dv)
    rng = np.random.default_rng(1)
    rows: list[dict[str, Any]] = []
    baselines: dict[str, Any] = {}
    c.doc["results"] = {"rows": rows, "baselines": baselines}
    for page in pages:
        n = total // page
        nb = 2 * n
        nbytes = n * page
        layer = torch.randint(0, 256, (nb, page), dtype=torch.uint8, device=dv)
        back = torch.empty_like(layer)
        ids = rng.choice(nb, n, replace=False).astype(np.int64)
        ids_t = torch.from_numpy(ids).to(dv)
        keep = torch.ones(nb, dtype=torch.bool, device=dv)
        keep[ids_t] = False
        view = memoryview(host)[:nbytes]
        torch.cuda.synchronize(dev)   # the copier's streams are not ordered after torch's
        gather = functools.partial(_sync_call, cp.gather_paged, layer.data_ptr(), nb, page, page,
                                   ids, view)
        scatter = functools.partial(_sync_call, cp.scatter_paged, back.data_ptr(), nb, page, page,
                                    ids, view)
        d2h = functools.partial(_C.cuda.memcpy, host.address, flat.data_ptr(), nbytes, 1, 0)
        h2d = functools.partial(_C.cuda.memcpy, flat.data_ptr(), host.address, nbytes, 0, 0)

        # bit-exactness, once per (page, method): poisoned outputs, torch's indexing as reference
        ref = layer.index_select(0, ids_t).reshape(-1).cpu().numpy()
        exact: dict[str, dict[str, bool]] = {}
        for m in METHODS:
            cp.method = m
            hv[:nbytes] = 0x5A
            gather()
            g_ok = bool(np.array_equal(hv[:nbytes], ref))
            back.fill_(0xA5)
            torch.cuda.synchronize(dev)
            scatter()
            s_ok = bool(torch.equal(back.index_select(0, ids_t), layer.index_select(0, ids_t)))
            s_ok = s_ok and bool((back[keep] == 0xA5).all().item())
            exact[m] = {"gather": g_ok, "scatter": s_ok}
        del ref
        ops = {("baseline", "d2h"): d2h, ("baseline", "h2d"): h2d}
        for m in METHODS:
            ops[(m, "d2h")], ops[(m, "h2d")] = gather, scatter
        names = ["baseline", *METHODS]
        for name in names:   # warm-up
            if name != "baseline":
                cp.method = name
            d2h() if name == "baseline" else gather()
            h2d() if name == "baseline" else scatter()
        samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for r in range(reps):
            for name in _rot(names, r):
                if name != "baseline":
                    cp.method = name
                for d in ("d2h", "h2d"):
                    samples[(name, d)].append(nbytes / _t(ops[(name, d)]) / GB)
        base = {d: _summ(samples[("baseline", d)]) for d in ("d2h", "h2d")}
        baselines[fmt_size(page)] = base
        for m in METHODS:
            for d in ("d2h", "h2d"):
                s = _summ(samples[(m, d)])
                paired = [x / y for x, y in zip(samples[(m, d)], samples[("baseline", d)])]
                op = "gather" if d == "d2h" else "scatter"
                rows.append({"page_bytes": page, "page": fmt_size(page), "method": m,
                             "direction": d, "op": op, "blocks": n, "bytes": nbytes,
                             "gbps": s["median"], "gbps_min": s["min"], "gbps_max": s["max"],
                             "gbps_all": s["all"], "baseline_gbps": base[d]["median"],
                             "ratio": _div(s["median"], base[d]["median"]),
                             "ratio_paired_median": statistics.median(paired),
                             "exact": exact[m][op]})
        del layer, back, keep, ids_t
        torch.cuda.empty_cache()
        c.save()
    cp.method = "staged"
    peak = {d: max(b[d]["median"] for b in baselines.values()) for d in ("d2h", "h2d")}
    c.doc["results"]["peak_gbps"] = peak
    hl: dict[str, Any] = {"exact_all": all(r["exact"] for r in rows),
                          "d2h_peak_gbps": round(peak["d2h"], 2),
                          "h2d_peak_gbps": round(peak["h2d"], 2)}
    for m in METHODS:
        for d in ("d2h", "h2d"):
            rs = [r["ratio"] for r in rows if r["method"] == m and r["direction"] == d
                  and r["page_bytes"] in (32 * KIB, 64 * KIB)]
            hl[f"{m}_{d}_min_ratio_32_64K"] = round(min(rs), 3)
    for d in ("d2h", "h2d"):
        hl[f"best_method_{d}_32_64K"] = max(METHODS, key=lambda m: hl[f"{m}_{d}_min_ratio_32_64K"])
    hl["target_met_staged"] = min(hl["staged_d2h_min_ratio_32_64K"],
                                  hl["staged_h2d_min_ratio_32_64K"]) >= TARGET_COPY_RATIO
    c.doc["headline"] = hl


def table_copy(doc: dict[str, Any]) -> str:
    rows = doc.get("results", {}).get("rows", [])
    by = {(r["page"], r["method"], r["direction"]): r for r in rows}
    cols = [("page", ">7"), ("", "1"), ("method", "<7"), ("D2H GB/s", ">9"), ("base", ">7"),
            ("ratio", ">7"), ("H2D GB/s", ">10"), ("base", ">7"), ("ratio", ">7"),
            ("  exact", "")]
    cells = []
    for (page, m, d), r in by.items():
        if d != "d2h":
            continue
        h = by.get((page, m, "h2d"), {})
        cells.append([page, "", m, num(r["gbps"]), num(r["baseline_gbps"]), num(r["ratio"]),
                      num(h.get("gbps")), num(h.get("baseline_gbps")), num(h.get("ratio")),
                      f"  {r['exact'] and h.get('exact', False)}"])
    return format_table(cols, cells)


# -- phase 2: file -------------------------------------------------------------------------------
def phase_file(c: Ctx) -> None:
    torch = _torch(c.dev)
    root = tempfile.mkdtemp(prefix="yrcache-gpu-bench-file-", dir=c.a.dir)
    c.doc["config"]["root"] = root
    errors = []
    try:
        for part in (_file_cache, _file_dfio):   # the second runs even if the first failed
            try:
                part(c, torch, root)
            except Exception as e:  # noqa: BLE001
                msg = f"{part.__name__}: {type(e).__name__}: {e}"
                errors.append(msg)
                c.doc["results"][f"{part.__name__.lstrip('_')}_error"] = msg
                c.doc["results"][f"{part.__name__.lstrip('_')}_traceback"] = traceback.format_exc()
                print(traceback.format_exc(), file=sys.stderr, flush=True)
            c.save()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    r = c.doc["results"]
    hl: dict[str, Any] = {}
    cache = r.get("cache", {})
    for op in ("store", "load"):
        x = cache.get(op)
        if x:
            hl[f"{op}_gpu_gbps"] = round(x["gpu_gbps"], 2)
            hl[f"{op}_cpu_gbps"] = round(x["cpu_gbps"], 2)
            hl[f"{op}_ratio"] = round(x["ratio"], 3) if x["ratio"] is not None else None
    if cache:
        hl["cache_exact"] = cache.get("exact")
        rs = [hl.get("store_ratio"), hl.get("load_ratio")]
        hl["target_met"] = all(x is not None and x >= TARGET_FILE_RATIO for x in rs)
    for b in r.get("device_file_io", {}).get("backends", []):
        key = f"dfio_{b['prefer']}"
        if "error" in b:
            hl[key] = f"error: {b['error'][:80]}"
        elif "same_as" in b:
            hl[key] = f"{b['backend']} (same as {b['same_as']})"
        else:
            hl[key] = (f"{b['backend']} write {num(b.get('write_gbps'))} read "
                       f"{num(b.get('read_gbps'))} GB/s exact={b.get('exact')}")
    c.doc["headline"] = hl
    if errors:
        raise RuntimeError("; ".join(errors))


def _file_cache(c: Ctx, torch: Any, root: str) -> None:
    import yrcache
    from yrcache.cache.layout import KVLayout
    dev = c.dev
    dv = f"cuda:{dev}"
    L, page, bt, chunk = 32, 64 * KIB, 16, 256
    per = chunk // bt
    seg = per * page
    obj = L * seg
    total = (256 if c.quick else 1024) * MIB
    n_chunks = max(2, total // obj)
    max_reps, min_reps = 5, 3
    budget = min(15.0 if c.quick else 30.0, max(8.0, 0.25 * c.left()))
    layout = KVLayout.paged("gpu-bench-paged", num_layers=L, dtype="bfloat16", kv_heads=8,
                            head_size=128, block_tokens=bt, page_bytes=page)
    ns = layout.namespace("gpu-bench-file", chunk_tokens=chunk)
    # one store call claims a staging slab per chunk up front (none free: the chunk is dropped),
    # so the store half of the staging must hold every chunk of a call
    staging = 2 * (n_chunks + 1) * obj + 8 * MIB
    cfg = c.doc["config"]
    cfg.update({"layers": L, "page_bytes": page, "block_tokens": bt, "chunk_tokens": chunk,
                "object_bytes": obj, "chunks": n_chunks, "bytes_per_op": n_chunks * obj,
                "mode": "sync", "staging_bytes": staging, "budget_s": round(budget, 1),
                "kv": "uint8 [blocks, 64 KiB] per layer (a paged layout accepts uint8); CUDA: "
                      "on the device; CPU: pageable torch CPU tensors with the same bytes",
                "keys": "fresh random tokens per repetition and path; objects deleted after each "
                        "repetition (outside the timed region)",
                "page_cache": "stores and loads use O_DIRECT where the file system allows it "
                              "(see env.build_info.odirect); the page cache is not dropped "
                              "(no root assumed), so a non-O_DIRECT load may hit it",
                "target_ratio": TARGET_FILE_RATIO})
    peak = _copy_peak(torch, dev, 64 * MIB, 5)
    c.doc["results"]["copy_peak"] = peak
    nb = n_chunks * per + 32
    g_src = [torch.randint(0, 256, (nb, page), dtype=torch.uint8, device=dv) for _ in range(L)]
    g_dst = [torch.empty_like(t) for t in g_src]
    c_src = [t.cpu() for t in g_src]
    c_dst = [torch.empty_like(t) for t in c_src]
    rng = np.random.default_rng(2)
    s_ids = rng.permutation(nb)[:n_chunks * per].astype(np.int64)
    d_ids = rng.permutation(nb)[:n_chunks * per].astype(np.int64)
    torch.cuda.synchronize(dev)
    cache = yrcache.Cache(root, ns, layout, mode="sync", staging_bytes=staging, janitor_period=0)
    cfg["gpu_copy_method"] = None
    try:
        kv = {"gpu": (g_src, g_dst), "cpu": (c_src, c_dst)}

        def toks(k: int) -> np.ndarray:
            return rng.integers(0, 1 << 30, k * chunk, dtype=np.int64)

        def store(path: str, t: np.ndarray, k: int) -> float:
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            r = cache.store(t, kv[path][0], s_ids[:k * per]).result()
            dt = time.perf_counter() - t0
            if r.stored != k:
                raise RuntimeError(f"{path} store wrote {r.stored} of {k} chunks: {r}")
            return dt

        def load(path: str, t: np.ndarray, k: int) -> float:
            torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            lf = cache.load(t, kv[path][1], d_ids[:k * per])
            r = lf.result()
            torch.cuda.synchronize(dev)   # the scatters run on the copier's load stream
            dt = time.perf_counter() - t0
            if r.tokens != k * chunk:
                raise RuntimeError(f"{path} load got {r.tokens} of {k * chunk} tokens: {r}")
            return dt

        def drop(keys: list[bytes]) -> None:
            for key in keys:
                cache.store_.delete(key)

        # warm-up: 2 chunks per path, twice: the first pins the staging (cudaHostRegister),
        # starts the threads and creates the copier; the second estimates a repetition's time
        for _ in range(2):
            t0 = time.perf_counter()
            for path in ("gpu", "cpu"):
                t = toks(2)
                store(path, t, 2)
                load(path, t, 2)
                drop(cache.keys(t))
            warm = time.perf_counter() - t0
        from yrcache.cuda import copy as G
        cfg["gpu_copy_method"] = G.copier(dev).method
        # a slow disk: shrink so that max_reps repetitions (4 ops of k chunks) fit the budget
        est_rep = warm / 2 * n_chunks
        if est_rep * max_reps > budget:
            k = max(2, int(budget / max_reps / (warm / 2)))
            if k < n_chunks:
                c.note(f"warm-up suggests {est_rep:.1f} s per repetition at {n_chunks} chunks: "
                       f"measuring {k} chunks ({fmt_size(k * obj)}) per op instead")
                n_chunks = k
                cfg["chunks"], cfg["bytes_per_op"] = n_chunks, n_chunks * obj
        nbytes = n_chunks * obj
        samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        exact: dict[str, bool] = {}
        t_start = time.perf_counter()
        for r in range(max_reps):
            if r >= min_reps and time.perf_counter() - t_start > budget:
                c.note(f"file: stopped after {r} repetitions ({budget:.0f} s budget)")
                break
            order = _rot(["gpu", "cpu"], r)
            tk = {p: toks(n_chunks) for p in order}
            if r == 0:   # poison the destinations: the check below sees only loaded bytes
                for t in g_dst + c_dst:
                    t.fill_(0xA5)
            for p in order:
                samples[(p, "store")].append(nbytes / store(p, tk[p], n_chunks) / GB)
            for p in order:
                samples[(p, "load")].append(nbytes / load(p, tk[p], n_chunks) / GB)
            if r == 0:
                k = n_chunks * per
                si, di = torch.from_numpy(s_ids[:k]), torch.from_numpy(d_ids[:k])
                exact["gpu"] = all(bool(torch.equal(d.index_select(0, di.to(dv)),
                                                    s.index_select(0, si.to(dv))))
                                   for s, d in zip(g_src, g_dst))
                exact["cpu"] = all(bool(torch.equal(d.index_select(0, di), s.index_select(0, si)))
                                   for s, d in zip(c_src, c_dst))
            for p in order:
                drop(cache.keys(tk[p]))
        res: dict[str, Any] = {"exact": exact["gpu"] and exact["cpu"], "exact_by_path": exact,
                               "bytes_per_op": nbytes, "warmup_s": round(warm, 3)}
        for op, d in (("store", "d2h"), ("load", "h2d")):
            g, h = _summ(samples[("gpu", op)]), _summ(samples[("cpu", op)])
            ref = min(peak[d]["median"], h["median"])
            res[op] = {"gpu": g, "cpu": h, "gpu_gbps": g["median"], "cpu_gbps": h["median"],
                       "copy_peak_gbps": peak[d]["median"], "reference_gbps": ref,
                       "ratio": _div(g["median"], ref),
                       "ratio_vs_cpu_paired_median": statistics.median(
                           [x / y for x, y in zip(samples[("gpu", op)], samples[("cpu", op)])])}
        res["cache_stats"] = {k: v for k, v in cache.stats().items() if k != "store"}
        c.doc["results"]["cache"] = res
    finally:
        cache.close()
        del g_src, g_dst, c_src, c_dst
        torch.cuda.empty_cache()


def _file_dfio(c: Ctx, torch: Any, root: str) -> None:
    """DeviceFileIO round trips, in a daemon thread with a time limit (cuFileDriverOpen has been
    seen to block: a hang here must not take the later phases with it)."""
    size = (64 if c.quick else 256) * MIB
    reps = 3 if c.quick else 5
    limit = min(15.0 if c.quick else 25.0, max(8.0, 0.2 * c.left()))
    out: dict[str, Any] = {"bytes": size, "time_limit_s": round(limit, 1), "backends": []}
    c.doc["results"]["device_file_io"] = out
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            _dfio_body(c, torch, root, size, reps, limit * 0.8, out)
        except BaseException as e:  # noqa: BLE001
            box["error"] = f"{type(e).__name__}: {e}"
            box["traceback"] = traceback.format_exc()

    th = threading.Thread(target=run, name="gpu-bench-dfio", daemon=True)
    th.start()
    th.join(limit)
    if th.is_alive():
        out["error"] = (f"timed out after {limit:.0f} s (cuFile driver open or I/O hung?); the "
                        "thread is left behind")
        c.note(out["error"])
    elif "error" in box:
        out["error"], out["traceback"] = box["error"], box["traceback"]


def _dfio_body(c: Ctx, torch: Any, root: str, size: int, reps: int, budget: float,
               out: dict[str, Any]) -> None:
    from yrcache.cuda import gds
    dev = c.dev
    torch.cuda.set_device(dev)
    src = torch.randint(0, 256, (size,), dtype=torch.uint8, device=f"cuda:{dev}")
    dst = torch.empty_like(src)
    seen: dict[str, str] = {}
    live = []
    for prefer in ("auto", "bounce-uring", "bounce-psync"):
        e: dict[str, Any] = {"prefer": prefer}
        out["backends"].append(e)
        try:
            io = gds.DeviceFileIO(dev, prefer=prefer)
        except Exception as ex:  # noqa: BLE001
            e["error"] = f"{type(ex).__name__}: {ex}"
            continue
        e["backend"], e["reason"] = io.backend, io.reason
        if io.backend in seen:
            e["same_as"] = seen[io.backend]
            io.close()
            continue
        seen[io.backend] = prefer
        path = os.path.join(root, f"dfio-{prefer}.bin")
        try:
            dst.fill_(0x5A)
            torch.cuda.synchronize(dev)
            nw = io.write(path, src.data_ptr(), size)
            nr = io.read(path, dst.data_ptr(), size)
            torch.cuda.synchronize(dev)
            e["exact"] = nw == size and nr == size and bool(torch.equal(src, dst))
            if not e["exact"]:
                e["moved"] = {"written": nw, "read": nr}
        except Exception as ex:  # noqa: BLE001
            e["error"] = f"{type(ex).__name__}: {ex}"
            io.close()
            continue
        live.append((e, io, path))
    samples: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    t0 = time.perf_counter()
    for r in range(reps):
        if r >= 2 and time.perf_counter() - t0 > budget:
            out["stopped_after_reps"] = r
            break
        for e, io, path in _rot(live, r):
            try:
                torch.cuda.synchronize(dev)
                samples[(e["prefer"], "write")].append(
                    size / _t(functools.partial(io.write, path, src.data_ptr(), size)) / GB)
                samples[(e["prefer"], "read")].append(
                    size / _t(functools.partial(io.read, path, dst.data_ptr(), size)) / GB)
            except Exception as ex:  # noqa: BLE001
                e["error"] = f"{type(ex).__name__}: {ex}"
        live = [x for x in live if "error" not in x[0]]
    for e, io, _ in live:
        for op in ("write", "read"):
            s = _summ(samples[(e["prefer"], op)])
            e[op], e[f"{op}_gbps"] = s, s["median"]
    for _, io, _ in live:
        io.close()
    out["note"] = ("writes are not fsynced; cuFile writes and reads use O_DIRECT descriptors, the "
                   "bounce rungs the IoEngine's O_DIRECT where allowed; cuFile on a VM runs in "
                   "compat mode (its own POSIX bounce)")


def table_file(doc: dict[str, Any]) -> str:
    r = doc.get("results", {})
    cache = r.get("cache", {})
    out = []
    if cache:
        out.append(f"Cache sync, {fmt_size(cache['bytes_per_op'])} per op, exact={cache['exact']}")
        cols = [("op", "<6"), ("GPU GB/s", ">10"), ("CPU GB/s", ">10"), ("copy peak", ">11"),
                ("ratio", ">7")]
        out.append(format_table(cols, [[op, num(cache[op]["gpu_gbps"]), num(cache[op]["cpu_gbps"]),
                                        num(cache[op]["copy_peak_gbps"]), num(cache[op]["ratio"])]
                                       for op in ("store", "load")], rule=False))
    d = r.get("device_file_io", {})
    if d:
        out.append(f"DeviceFileIO, {fmt_size(d['bytes'])}" +
                   (f" - {d['error']}" if d.get("error") else ""))
        for e in d.get("backends", []):
            if "error" in e:
                out.append(f"  {e['prefer']:<13} error: {e['error'][:100]}")
            elif "same_as" in e:
                out.append(f"  {e['prefer']:<13} -> {e['backend']} (same as {e['same_as']})")
            else:
                out.append(f"  {e['prefer']:<13} -> {e['backend']:<13} write "
                           f"{num(e.get('write_gbps'))} read {num(e.get('read_gbps'))} GB/s "
                           f"exact={e.get('exact')}  ({e.get('reason') or 'first choice'})")
    return "\n".join(out)


# -- phase 3: overlap ----------------------------------------------------------------------------
class _Offload:
    """A thread keeping two gathers in flight on the copier's offload stream until stopped."""

    def __init__(self, cp: Any, layer: Any, nb: int, page: int, ids: np.ndarray,
                 views: list[memoryview], nbytes: int) -> None:
        self.cp, self.layer, self.nb, self.page, self.ids = cp, layer, nb, page, ids
        self.views, self.nbytes = views, nbytes
        self.stop = threading.Event()
        self.done: list[float] = []   # completion times (perf_counter)
        self.err: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="gpu-bench-offload", daemon=True)

    def _run(self) -> None:
        try:
            pend: collections.deque[Any] = collections.deque()
            base, i = self.layer.data_ptr(), 0
            while not self.stop.is_set():
                pend.append(self.cp.gather_paged(base, self.nb, self.page, self.page, self.ids,
                                                 self.views[i & 1]))
                i += 1
                if len(pend) >= 2:
                    pend.popleft().synchronize()
                    self.done.append(time.perf_counter())
            while pend:
                pend.popleft().synchronize()
                self.done.append(time.perf_counter())
        except BaseException as e:  # noqa: BLE001
            self.err = e

    def start(self) -> None:
        self.thread.start()
        t0 = time.monotonic()
        while len(self.done) < 2 and self.err is None and time.monotonic() - t0 < 10:
            time.sleep(0.0005)
        if self.err is not None:
            raise self.err

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        if self.err is not None:
            raise self.err

    def gbps(self, t0: float, t1: float) -> float:
        k = sum(1 for t in self.done if t0 <= t <= t1)
        return k * self.nbytes / (t1 - t0) / GB


def phase_overlap(c: Ctx) -> None:
    torch = _torch(c.dev)
    from yrcache.cuda import copy as G
    from yrcache._native import _C
    from yrcache.io.engine import HostBuffer
    dev = c.dev
    dv = f"cuda:{dev}"
    page, total = 64 * KIB, 64 * MIB
    n = total // page
    nb = 2 * n
    N = 8192
    target_s = 0.5 if c.quick else 1.0
    reps = 5
    methods = ["staged", "mapped"]
    cp = _C.cuda.Copier(dev, _staging_bytes(), "staged")
    layer = torch.randint(0, 256, (nb, page), dtype=torch.uint8, device=dv)
    ids = np.random.default_rng(3).choice(nb, n, replace=False).astype(np.int64)
    bufs = [HostBuffer(total) for _ in range(2)]
    for b in bufs:
        G.pin(b)
    views = [memoryview(b)[:total] for b in bufs]
    A = torch.randn(N, N, dtype=torch.bfloat16, device=dv)
    B = torch.randn(N, N, dtype=torch.bfloat16, device=dv)
    C = torch.empty(N, N, dtype=torch.bfloat16, device=dv)
    torch.cuda.synchronize(dev)
    peak = _copy_peak(torch, dev, total, 5)
    d2h_peak = peak["d2h"]["median"]

    def mm(k: int) -> float:
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(k):
            torch.mm(A, B, out=C)
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / 1e3

    mm(10)
    per = mm(20) / 20
    k = max(20, round(target_s / per))
    c.doc["config"] = {"matmul": f"bf16 {N}x{N} @ {N}x{N}, torch.mm(out=) on the default stream",
                       "matmuls_per_run": k, "matmul_s_calibrated": per,
                       "offload": f"Copier.gather_paged of {n} random pages of 64 KiB (64 MiB) of "
                                  "a separate uint8 tensor into two pinned HostBuffers, two ops "
                                  "in flight, from a Python thread; not ordered after the "
                                  "default stream",
                       "reps": reps, "methods": methods,
                       "device_staging_bytes": _staging_bytes(),
                       "offload_gbps": "bytes of gathers completing inside the host-side window "
                                       "of the matmul run / window",
                       "targets": {"slowdown_pct_max": TARGET_SLOWDOWN_PCT,
                                   "offload_fraction_of_d2h_peak_min": TARGET_OFFLOAD_FRACTION}}
    # offload alone (no matmul), per method
    alone_off: dict[str, float] = {}
    for m in methods:
        cp.method = m
        off = _Offload(cp, layer, nb, page, ids, views, total)
        off.start()
        t0 = time.perf_counter()
        time.sleep(0.3)
        t1 = time.perf_counter()
        off.finish()
        alone_off[m] = off.gbps(t0, t1)
    mm_s: dict[str, list[float]] = collections.defaultdict(list)
    off_g: dict[str, list[float]] = collections.defaultdict(list)
    for r in range(reps):
        for name in _rot(["alone", *methods], r):
            if name == "alone":
                mm_s[name].append(mm(k))
                continue
            cp.method = name
            off = _Offload(cp, layer, nb, page, ids, views, total)
            off.start()
            try:
                t0 = time.perf_counter()
                mm_s[name].append(mm(k))
                t1 = time.perf_counter()
            finally:
                off.finish()
            off_g[name].append(off.gbps(t0, t1))
    cp.method = "staged"
    alone = _summ(mm_s["alone"])
    flops = 2.0 * N * N * N * k
    res: dict[str, Any] = {"matmul_alone_s": alone,
                           "tflops_alone": flops / alone["median"] / 1e12,
                           "d2h_peak": peak, "d2h_peak_gbps": d2h_peak, "methods": {}}
    hl: dict[str, Any] = {"d2h_peak_gbps": round(d2h_peak, 2),
                          "tflops_alone": round(res["tflops_alone"], 1)}
    for m in methods:
        s, g = _summ(mm_s[m]), _summ(off_g[m])
        slow = (s["median"] / alone["median"] - 1.0) * 100.0
        frac = _div(g["median"], d2h_peak)
        ok = slow <= TARGET_SLOWDOWN_PCT and frac is not None and frac >= TARGET_OFFLOAD_FRACTION
        res["methods"][m] = {"matmul_s": s, "slowdown_pct": slow,
                             "slowdown_pct_paired_median": statistics.median(
                                 [(x / y - 1.0) * 100.0 for x, y in zip(mm_s[m], mm_s["alone"])]),
                             "offload_gbps": g, "offload_gbps_median": g["median"],
                             "offload_fraction_of_d2h_peak": frac,
                             "offload_alone_gbps": alone_off[m], "target_met": ok}
        hl[f"{m}_slowdown_pct"] = round(slow, 2)
        hl[f"{m}_offload_gbps"] = round(g["median"], 2)
        hl[f"{m}_offload_x_peak"] = round(frac, 3) if frac is not None else None
        hl[f"{m}_target_met"] = ok
    c.doc["results"] = res
    c.doc["headline"] = hl


def table_overlap(doc: dict[str, Any]) -> str:
    r = doc.get("results", {})
    if not r:
        return ""
    a = r["matmul_alone_s"]
    cols = [("method", "<8"), ("matmul s", ">10"), ("slowdown%", ">11"), ("offload GB/s", ">14"),
            ("x peak", ">8"), ("alone GB/s", ">12"), ("  target", "")]
    rows = [[m, num(x["matmul_s"]["median"], ".4f"), num(x["slowdown_pct"]),
             num(x["offload_gbps_median"]), num(x["offload_fraction_of_d2h_peak"]),
             num(x["offload_alone_gbps"]), f"  {x['target_met']}"]
            for m, x in r["methods"].items()]
    return (f"matmul alone {num(a['median'], '.4f')} s ({doc['config']['matmuls_per_run']} x "
            f"{doc['config']['matmul']}: {num(r['tflops_alone'], '.0f')} TFLOP/s); D2H peak "
            f"{num(r['d2h_peak_gbps'])} GB/s\n" + format_table(cols, rows, rule=False))


# -- phase 4: serve ------------------------------------------------------------------------------
LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8}


def _kv_pairs(past: Any) -> list[tuple[Any, Any]]:
    """(K, V) per layer of a transformers DynamicCache (5.x: .layers; 4.x: key_cache)."""
    layers = getattr(past, "layers", None)
    if layers and hasattr(layers[0], "keys"):
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(past.key_cache, past.value_cache))


def _cache_kw(fn: Any) -> str:
    import inspect
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def phase_serve(c: Ctx) -> None:
    torch = _torch(c.dev)
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import yrcache
    from yrcache.cache.layout import KVLayout
    dev = c.dev
    dv = f"cuda:{dev}"
    lengths = c.a.serve_tokens or ([8192] if c.quick else [8192, 32768])
    layers = c.a.serve_layers
    reps = 3
    chunk = 256
    shape = dict(LLAMA3_8B, num_hidden_layers=layers)
    c.doc["config"] = {"model": "Llama-3-8B shape, random weights (transformers "
                                f"{transformers.__version__} LlamaForCausalLM, bf16, built on "
                                "the GPU)", "shape": shape, "prompt_tokens": lengths,
                       "chunk_tokens": chunk, "reps": reps,
                       "modes": {"recompute": "prefill of the whole prompt (DynamicCache)",
                                 "sync": "Cache(mode=sync).load of the prefix (all but the last "
                                         "chunk) into a DynamicCache's tensors, then prefill of "
                                         "the last chunk",
                                 "async": "Cache(mode=async).load; a forward pre-hook on decoder "
                                          "layer i waits for layer i only"},
                       "ttft": "lookup + load + prefill until the argmax of the last prompt "
                               "token's logits is on the host (synchronized), all on one "
                               "non-default compute stream"}
    t0 = time.perf_counter()
    cfg = LlamaConfig(max_position_embeddings=max(lengths) + 1024, **shape)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dv):
            model: Any = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    if any(t.device.type != "cuda" for t in [*model.parameters(), *model.buffers()]):
        c.note("some weights were not built on the GPU: moved with model.to()")
        model = model.to(device=dv)
    if any(p.dtype != torch.bfloat16 for p in model.parameters()):
        c.note("some weights were not bf16: converted with model.to(torch.bfloat16)")
        model = model.to(dtype=torch.bfloat16)
    model.eval()
    torch.cuda.synchronize(dev)
    c.doc["config"]["model_build_s"] = round(time.perf_counter() - t0, 2)
    c.doc["config"]["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    c.doc["config"]["params"] = sum(p.numel() for p in model.parameters())
    c.save()
    kvh, hd = shape["num_key_value_heads"], shape["hidden_size"] // shape["num_attention_heads"]
    layout = KVLayout.dense(num_layers=layers, dtype="bfloat16", kv_heads=kvh, head_size=hd)
    ns = layout.namespace("gpu-bench-random-llama3-8b", chunk_tokens=chunk)
    obj = layout.segment_bytes(chunk) * layers
    group = 16
    staging = 2 * (group + 1) * obj + 8 * MIB     # 16 store slabs; the rest are load slabs
    root = tempfile.mkdtemp(prefix="yrcache-gpu-bench-serve-", dir=c.a.dir)
    c.doc["config"].update({"root": root, "staging_bytes_per_cache": staging,
                            "object_bytes": obj})
    caches: dict[str, Any] = {}
    hooks: list[Any] = []
    state: dict[str, Any] = {"load": None, "wait": 0.0}
    try:
        for m in ("sync", "async"):
            caches[m] = yrcache.Cache(root, ns, layout, mode=m, staging_bytes=staging,
                                      janitor_period=0)
        hooks += [layer.register_forward_pre_hook(_wait_hook(state, i))
                  for i, layer in enumerate(model.model.layers)]
        _serve_lengths(c, torch, model, caches, state, lengths, shape, chunk, reps, obj)
    finally:
        for h in hooks:
            h.remove()
        for cache in caches.values():
            cache.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_hook(state: dict[str, Any], i: int) -> Any:
    """A forward pre-hook for decoder layer i: wait for layer i of the load in flight, if any."""
    def hook(_mod: Any, _args: Any) -> None:
        lf = state["load"]
        if lf is not None:
            t = time.perf_counter()
            lf.layer(i).result()
            state["wait"] += time.perf_counter() - t
    return hook


def _serve_lengths(c: Ctx, torch: Any, model: Any, caches: dict[str, Any], state: dict[str, Any],
                   lengths: list[int], shape: dict[str, int], chunk: int, reps: int,
                   obj: int) -> None:
    from transformers import DynamicCache
    dev = c.dev
    dv = f"cuda:{dev}"
    layers = shape["num_hidden_layers"]
    kvh, hd = shape["num_key_value_heads"], shape["hidden_size"] // shape["num_attention_heads"]
    group = 16
    stream = torch.cuda.Stream(dv)   # not the legacy default stream (handle 0)
    kw = _cache_kw(type(model.model).forward)

    def forward(ids_t: Any, past: Any) -> tuple[Any, Any]:
        out = model.model(input_ids=ids_t, use_cache=True, **{kw: past})
        logits = model.lm_head(out.last_hidden_state[:, -1, :])
        return logits[0], out

    def recompute(prompt_np: np.ndarray, prompt_t: Any) -> tuple[float, Any, dict[str, Any]]:
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.cuda.stream(stream):
            logits, _ = forward(prompt_t, None)
            tok = int(torch.argmax(logits))
        dt = time.perf_counter() - t0
        return dt, logits.float(), {"token": tok}

    def loaded(mode: str, prompt_np: np.ndarray, prompt_t: Any, want: int
               ) -> tuple[float, Any, dict[str, Any]]:
        cache = caches[mode]
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.cuda.stream(stream):
            hit = min(cache.lookup(prompt_np), (len(prompt_np) - 1) // chunk * chunk)
            if hit != want:
                raise RuntimeError(f"{mode}: lookup found {hit} tokens, {want} were stored")
            shp = (1, kvh, hit, hd)
            past = DynamicCache(ddp_cache_data=[
                (torch.empty(shp, dtype=torch.bfloat16, device=dv),
                 torch.empty(shp, dtype=torch.bfloat16, device=dv)) for _ in range(layers)])
            kv = _kv_pairs(past)   # the tensors the DynamicCache holds (it copied ours)
            state["wait"] = 0.0
            tl = time.perf_counter()
            lf = cache.load(prompt_np[:hit], kv, stream=stream)
            if mode == "sync":   # complete on return
                state["wait"] = time.perf_counter() - tl
            else:
                state["load"] = lf
            try:
                logits, _ = forward(prompt_t[:, hit:], past)
            finally:
                state["load"] = None
            r = lf.result()
            tok = int(torch.argmax(logits))
        dt = time.perf_counter() - t0
        if r.tokens != hit:
            raise RuntimeError(f"{mode}: partial load {r}")
        return dt, logits.float(), {"token": tok, "load_wait_s": state["wait"], "hit": hit}

    results: list[dict[str, Any]] = []
    c.doc["results"] = {"lengths": results}
    hl: dict[str, Any] = {}
    c.doc["headline"] = hl
    rng = np.random.default_rng(4)
    prev_cost = 0.0
    for li, P in enumerate(lengths):
        t_len = time.perf_counter()
        if li > 0:
            est = prev_cost * (P / lengths[li - 1]) ** 1.3
            if est > c.left() - 5:
                c.note(f"serve: {P} tokens skipped: ~{est:.0f} s estimated, "
                       f"{c.left():.0f} s left of --budget")
                results.append({"prompt_tokens": P, "skipped": f"~{est:.0f} s estimated, "
                                f"{c.left():.0f} s left"})
                break
        prompt_np = rng.integers(0, shape["vocab_size"], P, dtype=np.int64)
        prompt_t = torch.from_numpy(prompt_np).to(dv).unsqueeze(0)
        hit = (P - 1) // chunk * chunk
        row: dict[str, Any] = {"prompt_tokens": P, "hit_tokens": hit,
                               "prefill_tokens_after_load": P - hit}
        results.append(row)
        # the prefix's KV: one full prefill (also the warm-up), stored through the sync cache
        ts = time.perf_counter()
        with torch.no_grad(), torch.cuda.stream(stream):
            _, out = forward(prompt_t, None)
        stream.synchronize()
        row["setup_prefill_s"] = round(time.perf_counter() - ts, 3)
        kv = _kv_pairs(_cache_of(out))
        ts = time.perf_counter()
        nch = hit // chunk
        for end in [*range(group, nch, group), nch]:
            r = caches["sync"].store(prompt_np[:end * chunk], kv, stream=stream).result()
            if r.failed or r.dropped:
                raise RuntimeError(f"setup store of {end} chunks: {r}")
        row["setup_store_s"] = round(time.perf_counter() - ts, 3)
        row["setup_store_gbps"] = nch * obj / (time.perf_counter() - ts) / GB
        del out, kv
        torch.cuda.empty_cache()
        runs = {"recompute": functools.partial(recompute, prompt_np, prompt_t),
                "sync": functools.partial(loaded, "sync", prompt_np, prompt_t, hit),
                "async": functools.partial(loaded, "async", prompt_np, prompt_t, hit)}
        warm = 0.0
        if li == 0:   # warm-up every mode once (allocator, pinning, threads)
            tw = time.perf_counter()
            for fn in runs.values():
                fn()
            warm = time.perf_counter() - tw
            row["warmup_s"] = round(warm, 3)
        ttft: dict[str, list[float]] = collections.defaultdict(list)
        extra: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        first_logits: dict[str, Any] = {}
        for rep in range(reps):
            for m in _rot(list(runs), rep):
                dt, logits, ex = runs[m]()
                ttft[m].append(dt)
                extra[m].append(ex)
                first_logits.setdefault(m, logits)
        for m in runs:
            row[m] = _summ(ttft[m])
        ref = first_logits["recompute"]
        for m in ("sync", "async"):
            row[f"ratio_{m}"] = _div(row[m]["median"], row["recompute"]["median"])
            row[f"{m}_load_wait_s"] = _summ([e["load_wait_s"] for e in extra[m]])
            d = (first_logits[m] - ref).norm() / ref.norm().clamp_min(1e-30)
            row[f"{m}_logits_rel_err_vs_recompute"] = float(d)
            row[f"{m}_argmax_agrees"] = extra[m][0]["token"] == extra["recompute"][0]["token"]
        k = f"{P // 1024}K"
        for m in runs:
            hl[f"ttft_{k}_{m}_ms"] = round(row[m]["median"] * 1e3, 1)
        for m in ("sync", "async"):
            hl[f"ratio_{k}_{m}"] = round(row[f"ratio_{m}"], 3)
        row["section_s"] = round(time.perf_counter() - t_len, 2)
        prev_cost = time.perf_counter() - t_len - warm   # setup + timed runs
        for key in caches["sync"].keys(prompt_np[:hit]):
            caches["sync"].store_.delete(key)
        c.save()


def table_serve(doc: dict[str, Any]) -> str:
    cols = [("tokens", ">7"), ("recompute ms", ">14"), ("sync ms", ">10"), ("ratio", ">7"),
            ("async ms", ">10"), ("ratio", ">7"), ("async wait ms", ">15")]
    rows: list[list[Any]] = []
    for r in doc.get("results", {}).get("lengths", []):
        if "skipped" in r or "recompute" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else "incomplete"
            rows.append([r["prompt_tokens"], f"  {why}"])
            continue
        rows.append([r["prompt_tokens"], num(r["recompute"]["median"] * 1e3, ".1f"),
                     num(r["sync"]["median"] * 1e3, ".1f"), num(r["ratio_sync"], ".3f"),
                     num(r["async"]["median"] * 1e3, ".1f"), num(r["ratio_async"], ".3f"),
                     num(r["async_load_wait_s"]["median"] * 1e3, ".1f")])
    return format_table(cols, rows, rule=False)


# -- driver --------------------------------------------------------------------------------------
RUNNERS: dict[str, tuple[Callable[[Ctx], None], Callable[[dict[str, Any]], str]]] = {
    "copy": (phase_copy, table_copy), "file": (phase_file, table_file),
    "overlap": (phase_overlap, table_overlap), "serve": (phase_serve, table_serve)}


def run_phase(a: argparse.Namespace, phase: str, env: dict[str, Any]) -> bool:
    fn, table = RUNNERS[phase]
    c = Ctx(a, phase, env)
    print(f"== {phase} ({c.left():.0f} s left of --budget)", file=sys.stderr, flush=True)
    c.save()
    terminated: Terminated | None = None
    try:
        fn(c)
        c.doc["ok"] = True
    except Terminated as e:
        terminated = e
        c.doc["ok"], c.doc["error"] = False, str(e)
    except Exception as e:  # noqa: BLE001 - recorded; `all` goes on with the next phase
        c.doc["ok"], c.doc["error"] = False, f"{type(e).__name__}: {e}"
        c.doc["traceback"] = traceback.format_exc()
        print(c.doc["traceback"], file=sys.stderr, flush=True)
    c.doc["partial"] = False
    c.save()
    print(f"\n== {phase}: {'ok' if c.doc['ok'] else 'FAILED: ' + str(c.doc['error'])} "
          f"({c.doc['elapsed_s']:.1f} s) -> {c.path}")
    try:
        t = table(c.doc)
        if t:
            print(t)
    except Exception as e:  # noqa: BLE001
        print(f"(table failed: {type(e).__name__}: {e})")
    for n in c.doc["notes"]:
        print(f"note: {n}")
    sys.stdout.flush()
    with contextlib.suppress(Exception):   # free the phase's device memory for the next one
        import gc
        gc.collect()
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if terminated is not None:
        raise terminated
    return bool(c.doc["ok"])


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m yrcache.bench.gpu_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=[*PHASES, "all"], help="what to measure")
    p.add_argument("--out", default="gpu_out",
                   help="directory for <phase>.json (created; default ./gpu_out)")
    p.add_argument("--dir", default="/tmp",
                   help="local file system for the file and serve phases' cache roots (a temp "
                        "dir is made and removed under it; default /tmp)")
    p.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes: 16 MiB copies, 256 MiB file ops, 0.5 s matmul runs, 8K "
                        "prompts only")
    p.add_argument("--budget", type=float, default=150.0,
                   help="seconds for the whole run: the file phase shrinks and the serve phase "
                        "skips longer prompts to stay inside it (default 150)")
    p.add_argument("--serve-tokens", type=_ints, default=None,
                   help="prompt lengths, comma separated (default 8192,32768; --quick 8192)")
    p.add_argument("--serve-layers", type=int, default=32,
                   help="decoder layers of the served model (default 32: Llama-3-8B)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    a.deadline = time.monotonic() + a.budget
    os.makedirs(a.out, exist_ok=True)
    a.out = os.path.abspath(a.out)
    if not os.path.isdir(a.dir) or not os.access(a.dir, os.W_OK | os.X_OK):
        print(f"error: --dir {a.dir!r} is not a writable directory", file=sys.stderr)
        return 2
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:   # not the main thread
        pass
    env = env_info(a.device, a.dir)
    print(f"card: {env.get('card')}  torch {env.get('torch')} (CUDA {env.get('torch_cuda')})  "
          f"python {env['python']}", flush=True)
    phases = list(PHASES) if a.phase == "all" else [a.phase]
    ok = True
    t0 = time.monotonic()
    try:
        for ph in phases:
            ok = run_phase(a, ph, env) and ok
    except Terminated as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 124
    print(f"\n{len(phases)} phase(s) in {time.monotonic() - t0:.1f} s: "
          f"{'all ok' if ok else 'some FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
