# SPDX-License-Identifier: Apache-2.0
"""Phase file: a paged Cache storing/loading from CUDA vs CPU tensors; DeviceFileIO round trips."""
from __future__ import annotations

import collections
import functools
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import traceback
from typing import Any

import numpy as np

from ..common import fmt_size, format_table, num
from .harness import (
    GB,
    KIB,
    MIB,
    TARGET_FILE_RATIO,
    Ctx,
    copy_peak,
    cuda_torch,
    divide,
    rotate,
    sample_summary,
    timed,
)


def phase_file(c: Ctx) -> None:
    torch = cuda_torch(c.dev)
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
    layers, page, bt, chunk = 32, 64 * KIB, 16, 256
    per = chunk // bt
    seg = per * page
    obj = layers * seg
    total = (256 if c.quick else 1024) * MIB
    n_chunks = max(2, total // obj)
    max_reps, min_reps = 5, 3
    budget = min(15.0 if c.quick else 30.0, max(8.0, 0.25 * c.left()))
    layout = KVLayout.paged("gpu-bench-paged", num_layers=layers, dtype="bfloat16", kv_heads=8,
                            head_size=128, block_tokens=bt, page_bytes=page)
    ns = layout.namespace("gpu-bench-file", chunk_tokens=chunk)
    # one store call claims a staging slab per chunk up front (none free: the chunk is dropped),
    # so the store half of the staging must hold every chunk of a call
    staging = 2 * (n_chunks + 1) * obj + 8 * MIB
    cfg = c.doc["config"]
    cfg.update({"layers": layers, "page_bytes": page, "block_tokens": bt, "chunk_tokens": chunk,
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
    peak = copy_peak(torch, dev, 64 * MIB, 5)
    c.doc["results"]["copy_peak"] = peak
    nb = n_chunks * per + 32
    g_src = [torch.randint(0, 256, (nb, page), dtype=torch.uint8, device=dv) for _ in range(layers)]
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
        from yrcache.cuda import copy as cuda_copy
        cfg["gpu_copy_method"] = cuda_copy.copier(dev).method
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
            order = rotate(["gpu", "cpu"], r)
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
            g, h = sample_summary(samples[("gpu", op)]), sample_summary(samples[("cpu", op)])
            ref = min(peak[d]["median"], h["median"])
            res[op] = {"gpu": g, "cpu": h, "gpu_gbps": g["median"], "cpu_gbps": h["median"],
                       "copy_peak_gbps": peak[d]["median"], "reference_gbps": ref,
                       "ratio": divide(g["median"], ref),
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
        for e, io, path in rotate(live, r):
            try:
                torch.cuda.synchronize(dev)
                samples[(e["prefer"], "write")].append(
                    size / timed(functools.partial(io.write, path, src.data_ptr(), size)) / GB)
                samples[(e["prefer"], "read")].append(
                    size / timed(functools.partial(io.read, path, dst.data_ptr(), size)) / GB)
            except Exception as ex:  # noqa: BLE001
                e["error"] = f"{type(ex).__name__}: {ex}"
        live = [x for x in live if "error" not in x[0]]
    for e, _, _ in live:
        for op in ("write", "read"):
            s = sample_summary(samples[(e["prefer"], op)])
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
