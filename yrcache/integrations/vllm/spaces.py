# SPDX-License-Identifier: Apache-2.0
"""Namespaces of a vLLM deployment: one per (pipeline stage, tensor-parallel rank), derived by ONE
function from the configuration both connector roles see. The scheduler uses all of them (a chunk
is a hit only when every rank's object exists); a worker picks its own and checks its KV tensors
against it before touching them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...cache.layout import KVLayout
from ...store.keys import Namespace
from . import compat
from .config import ConnectorConfig


@dataclass(frozen=True)
class RankSpace:
    tp_rank: int
    pp_rank: int
    layout: KVLayout
    ns: Namespace
    #: stores this namespace's objects: False when a lower TP rank holds the same KV (MLA, or KV
    #: heads replicated across ranks), so identical objects are written once
    writer: bool
    #: one block per object, for the blocks past a request's last whole chunk (tails: a hit then
    #: ends on a block, as vLLM's own prefix cache does); None when a chunk is one block
    tail_ns: Namespace | None = None


@dataclass(frozen=True)
class Deployment:
    spaces: tuple[RankSpace, ...]
    block_tokens: int
    chunk_tokens: int
    mla: bool

    def space(self, tp_rank: int, pp_rank: int) -> RankSpace:
        for s in self.spaces:
            if (s.tp_rank, s.pp_rank) == (tp_rank, pp_rank):
                return s
        raise KeyError(f"no namespace for tp_rank={tp_rank} pp_rank={pp_rank}")

    @property
    def unique(self) -> list[Namespace]:
        """Distinct namespaces (what a lookup must find), in rank order."""
        seen: dict[bytes, Namespace] = {}
        for s in self.spaces:
            seen.setdefault(s.ns.digest, s.ns)
        return list(seen.values())

    @property
    def tails(self) -> dict[str, Namespace]:
        """Namespace hex -> its tail namespace (block-sized objects), for distinct namespaces."""
        return {s.ns.hex: s.tail_ns for s in self.spaces if s.tail_ns is not None}


def model_identity(vllm_config: Any, cfg: ConnectorConfig) -> str:
    if cfg.model_id:
        return cfg.model_id
    mc = vllm_config.model_config
    ident = f"{mc.model}@{mc.revision or ''}"
    quant = getattr(mc, "quantization", None)
    return f"{ident}+{quant}" if quant else ident


def derive(vllm_config: Any, kv_cache_config: Any, cfg: ConnectorConfig) -> Deployment:
    """Every rank's namespace. Raises ValueError (with the reason) for deployments the connector
    does not handle: more than one KV-cache group, non-attention caches, pages that are not
    contiguous per (layer, block)."""
    spec, why = compat.attention_spec(kv_cache_config)
    if spec is None:
        raise ValueError(why)
    layout_name = compat.kv_cache_layout(kv_cache_config, vllm_config)
    if layout_name and layout_name not in compat.PAGE_CONTIGUOUS_LAYOUTS:
        raise ValueError(f"KV cache layout {layout_name} does not keep each (layer, block) "
                         f"in one page; need one of {compat.PAGE_CONTIGUOUS_LAYOUTS}")
    mla = compat.is_mla(spec)
    bt = int(spec.block_size)
    chunk = -(-cfg.chunk_tokens // bt) * bt
    pc, mc = vllm_config.parallel_config, vllm_config.model_config
    tp, pp = int(pc.tensor_parallel_size), int(pc.pipeline_parallel_size)
    total_kv = 1 if mla else int(mc.get_total_num_kv_heads())
    kv_heads = int(spec.num_kv_heads)
    name = f"vllm-{compat.device_type()}-{layout_name or 'default'}" + ("-mla" if mla else "")
    extra = {"mla": "1"} if mla else {}
    model = model_identity(vllm_config, cfg)
    spaces: list[RankSpace] = []
    for p in range(pp):
        lo, hi = compat.pp_layer_range(vllm_config, p, pp)
        layout = KVLayout.paged(name, num_layers=hi - lo, dtype=compat.dtype_name(spec.dtype),
                                kv_heads=kv_heads, head_size=int(spec.head_size),
                                block_tokens=bt, page_bytes=int(spec.page_size_bytes))
        firsts: set[int] = set()
        for t in range(tp):
            first = 0 if mla else t * total_kv // tp
            ns, tail = (layout.namespace(model, chunk_tokens=c, salt=cfg.salt, first_layer=lo,
                                         first_kv_head=first, extra=extra) for c in (chunk, bt))
            spaces.append(RankSpace(t, p, layout, ns, first not in firsts,
                                    tail if chunk > bt else None))
            firsts.add(first)
    return Deployment(tuple(spaces), bt, chunk, mla)


__all__ = ["Deployment", "RankSpace", "derive", "model_identity"]
