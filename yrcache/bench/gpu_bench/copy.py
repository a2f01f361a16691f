# SPDX-License-Identifier: Apache-2.0
"""Phase copy: gather/scatter of random pages per copy method vs one contiguous memcpy."""
from __future__ import annotations

import collections
import functools
import statistics
from typing import Any

import numpy as np

from ..common import fmt_size, format_table, num
from .harness import (
    GB,
    KIB,
    METHODS,
    MIB,
    TARGET_COPY_RATIO,
    Ctx,
    cuda_torch,
    divide,
    rotate,
    sample_summary,
    staging_bytes,
    sync_call,
    timed,
)


def phase_copy(c: Ctx) -> None:
    torch = cuda_torch(c.dev)
    from yrcache._native import _C
    from yrcache.cuda import copy as cuda_copy
    from yrcache.io.engine import HostBuffer
    dev = c.dev
    dv = f"cuda:{dev}"
    total = (16 if c.quick else 64) * MIB
    reps = 5 if c.quick else 9
    pages = [p * KIB for p in (16, 32, 64, 128)]
    staging = staging_bytes()
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
    cuda_copy.pin(host)
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
        gather = functools.partial(sync_call, cp.gather_paged, layer.data_ptr(), nb, page, page,
                                   ids, view)
        scatter = functools.partial(sync_call, cp.scatter_paged, back.data_ptr(), nb, page, page,
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
            for name in rotate(names, r):
                if name != "baseline":
                    cp.method = name
                for d in ("d2h", "h2d"):
                    samples[(name, d)].append(nbytes / timed(ops[(name, d)]) / GB)
        base = {d: sample_summary(samples[("baseline", d)]) for d in ("d2h", "h2d")}
        baselines[fmt_size(page)] = base
        for m in METHODS:
            for d in ("d2h", "h2d"):
                s = sample_summary(samples[(m, d)])
                paired = [x / y for x, y in zip(samples[(m, d)], samples[("baseline", d)])]
                op = "gather" if d == "d2h" else "scatter"
                rows.append({"page_bytes": page, "page": fmt_size(page), "method": m,
                             "direction": d, "op": op, "blocks": n, "bytes": nbytes,
                             "gbps": s["median"], "gbps_min": s["min"], "gbps_max": s["max"],
                             "gbps_all": s["all"], "baseline_gbps": base[d]["median"],
                             "ratio": divide(s["median"], base[d]["median"]),
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
