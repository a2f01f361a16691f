# SPDX-License-Identifier: Apache-2.0
"""The connector's settings: ``kv_connector_extra_config`` keys, each overridable by an environment
variable ``YRCACHE_<KEY>`` (upper case, registered in :mod:`yrcache.envs`), so an operator can
change one without editing a launch command. Parsed once per process, with errors that name the
key."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ... import envs
from ...io.buffers import MAX_ARENA_BYTES
from ...store.paths import check_root


@dataclass(frozen=True)
class ConnectorConfig:
    #: the cache directory (local or shared file system); required
    root: str
    #: "async": loads pipeline layer by layer under the forward pass, stores write in the
    #: background; "sync": loads finish before the forward pass, stores are durable before the
    #: step returns (the baseline that shows what async buys)
    mode: str = "async"
    #: tokens per object; rounded up to a multiple of the engine's block size
    chunk_tokens: int = 256
    #: when a request finishes, also store the whole blocks past its last whole chunk, one block
    #: per object, so a later hit (after a restart, on another node) ends on the block where
    #: vLLM's own prefix cache would end it, and the prefill split (hence the output) is the same
    store_tails: bool = True
    #: byte budget of the whole root (0: unbounded); a janitor evicts least recently used objects
    capacity_bytes: int = 0
    #: host memory for staging stores and loads
    staging_bytes: int = 512 << 20
    #: I/O backend: auto | uring | psync
    backend: str = "auto"
    #: tenant salt: roots shared between tenants stay disjoint (requests may add ``cache_salt``)
    salt: str = ""
    #: -1 (default): load or recompute each hit by measured costs (the workers' read latency and
    #: bandwidth against the engine's prefill rate; docs/vllm.md); N >= 0: the static rule, hits
    #: shorter than N tokens are recomputed, longer ones loaded (0: always load)
    min_load_tokens: int = -1
    #: host memory per worker for reading the KV of queued requests ahead of their admission
    #: (0: off); taken as prefetches need it
    prefetch_bytes: int = 256 << 20
    #: async stores yield when the smoothed latency of one object's put exceeds this (seconds):
    #: new ones are dropped (counted) while others are in flight, so a slow shared file system's
    #: store backlog never delays loads. 0: never
    store_yield_s: float = 2.0
    #: hits of at least this many tokens load with the request parked (other requests keep
    #: running, vLLM's ``load_async``); shorter hits load under the forward pass. 0: never park
    park_load_tokens: int = 0
    #: how long a scheduler step waits for a file-system lookup before answering "ask again
    #: later" (the request is considered again next step, the lookup still running)
    lookup_wait_ms: float = 5.0
    #: model identity in the namespace (default: the model path or name plus its revision)
    model_id: str = ""
    #: at shutdown, wait this long for in-flight stores to publish
    drain_timeout_s: float = 30.0
    #: a host-memory LRU of the chunks this worker stored or loaded, in front of the files
    #: (0: off); memory is taken as chunks enter it. On by default: a node re-reading its own
    #: recent history from a shared file system pays the round trips and daemon CPU again
    host_tier_bytes: int = 1 << 30
    #: what vLLM does when a load fails: "recompute" the missing blocks (the connector sets
    #: vLLM's kv_load_failure_policy to this; vLLM 0.32's own default, "fail", ends the request)
    load_failure_policy: str = "recompute"
    #: a root that cannot be used at start-up (not a directory, cannot be created or opened;
    #: a producer's root it cannot write): "fail" stops vLLM's start-up with one message naming
    #: the root, "serve" logs it and serves without the cache (a node whose shared mount is late)
    on_bad_root: str = "fail"

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("yrcache connector: 'root' (kv_connector_extra_config) or "
                             "YRCACHE_ROOT must name the cache directory")
        try:
            check_root(self.root)
        except (TypeError, ValueError) as e:
            raise ValueError(f"yrcache connector: root: {e}") from None
        if self.mode not in ("async", "sync"):
            raise ValueError(f"yrcache connector: mode must be 'async' or 'sync', got "
                             f"{self.mode!r}")
        if self.load_failure_policy not in ("recompute", "fail"):
            raise ValueError(f"yrcache connector: load_failure_policy must be 'recompute' or "
                             f"'fail', got {self.load_failure_policy!r}")
        if self.on_bad_root not in ("fail", "serve"):
            raise ValueError(f"yrcache connector: on_bad_root must be 'fail' or 'serve', got "
                             f"{self.on_bad_root!r}")
        if self.backend not in ("auto", "uring", "psync"):
            raise ValueError(f"yrcache connector: backend must be auto, uring or psync, got "
                             f"{self.backend!r}")
        if not isinstance(self.store_tails, bool):
            raise TypeError(f"yrcache connector: store_tails must be bool, got "
                            f"{self.store_tails!r}")
        for f, lo, hi in _RANGES:
            v = getattr(self, f)
            kinds = (int, float) if isinstance(lo, float) else (int,)   # an int is a float too
            if isinstance(v, bool) or not isinstance(v, kinds):
                raise TypeError(f"yrcache connector: {f} must be {type(lo).__name__}, got {v!r}")
            if not (lo <= v <= hi):   # NaN fails this too
                raise ValueError(f"yrcache connector: {f} must be in [{lo}, {hi}], got {v!r}")

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None,
                   environ: Mapping[str, str] | None = None) -> ConnectorConfig:
        extra = dict(extra or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(extra) - set(fields))
        if unknown:
            raise ValueError(f"yrcache connector: unknown kv_connector_extra_config keys "
                             f"{unknown}; known: {sorted(fields)}")
        kw: dict[str, Any] = {}
        for name, f in fields.items():
            raw: Any = extra.get(name)
            src = f"kv_connector_extra_config[{name!r}]"
            env = envs.raw(f"YRCACHE_{name.upper()}", environ)
            if env is not None:
                raw, src = env, f"YRCACHE_{name.upper()}"
            if raw is None:
                continue
            kw[name] = _parse(f.type, raw, src)
        if "root" not in kw:
            kw["root"] = ""
        return cls(**kw)


_TOKENS, _BYTES = 1 << 24, 1 << 60
_STAGING = MAX_ARENA_BYTES   # one BufferPool's bound
#: each number's range: a value past these is a typo (or an overflow), not a setting
_RANGES = (("chunk_tokens", 1, 1 << 20), ("staging_bytes", 1, _STAGING),
           ("capacity_bytes", 0, _BYTES), ("host_tier_bytes", 0, _BYTES),
           ("min_load_tokens", -1, _TOKENS), ("park_load_tokens", 0, _TOKENS),
           ("prefetch_bytes", 0, _BYTES), ("store_yield_s", 0.0, 86400.0),
           ("lookup_wait_ms", 0.0, 60e3), ("drain_timeout_s", 0.0, 86400.0))


def _parse(typ: Any, raw: Any, src: str) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if t == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError("not an integer")
            return int(raw)
        if t == "float":
            return float(raw)
        if t == "bool":
            if isinstance(raw, bool):
                return raw
            v = str(raw).strip().lower()
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off"):
                return False
            raise ValueError("not a boolean (true/false, 1/0, yes/no, on/off)")
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {type(raw).__name__}")
        return raw
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"yrcache connector: {src}={raw!r:.80} is invalid ({e})") from None


__all__ = ["ConnectorConfig"]
