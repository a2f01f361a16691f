# SPDX-License-Identifier: Apache-2.0
"""What every phase shares: constants and targets, timing helpers, the CUDA check, the
machine description and the per-phase document (``Ctx``) that is saved as ``OUT/<phase>.json``."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from ..common import git_sha, summarize

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


def on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated(f"terminated by signal {signum} (out of time?)")


sample_summary = functools.partial(summarize, median="median", min="min", max="max", n="n",
                          all="samples")


def divide(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rotate(xs: list[Any], r: int) -> list[Any]:
    k = r % len(xs) if xs else 0
    return xs[k:] + xs[:k]


def staging_bytes() -> int:
    return int(os.environ.get("YRCACHE_GPU_STAGING_MB", "16")) << 20


def cuda_torch(dev: int) -> Any:
    """torch, after checking torch and yrcache both see CUDA device ``dev``."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device "
                           f"(torch.version.cuda={torch.version.cuda})")
    from yrcache.cuda import copy as cuda_copy
    ok, why = cuda_copy.status()
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


def copy_peak(torch: Any, dev: int, nbytes: int, reps: int) -> dict[str, Any]:
    """D2H and H2D GB/s of one _C.cuda.memcpy of nbytes between pinned host and device memory."""
    from yrcache._native import _C
    from yrcache.cuda import copy as cuda_copy
    from yrcache.io.engine import HostBuffer
    host = HostBuffer(nbytes)
    cuda_copy.pin(host)
    flat = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=f"cuda:{dev}")
    torch.cuda.synchronize(dev)
    d2h = functools.partial(_C.cuda.memcpy, host.address, flat.data_ptr(), nbytes, 1, 0)
    h2d = functools.partial(_C.cuda.memcpy, flat.data_ptr(), host.address, nbytes, 0, 0)
    d2h()
    h2d()
    s: dict[str, list[float]] = {"d2h": [], "h2d": []}
    for _ in range(reps):
        s["d2h"].append(nbytes / timed(d2h) / GB)
        s["h2d"].append(nbytes / timed(h2d) / GB)
    return {"bytes": nbytes, "d2h": sample_summary(s["d2h"]), "h2d": sample_summary(s["h2d"])}


def sync_call(fn: Callable[..., Any], *args: Any) -> None:
    """Enqueue a copier op and wait for its completion event."""
    fn(*args).synchronize()
