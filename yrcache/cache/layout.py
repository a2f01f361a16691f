# SPDX-License-Identifier: Apache-2.0
"""How an engine holds its KV per layer, so chunks can be gathered into objects and back.

- ``paged`` (vLLM): each layer is one tensor of ``num_blocks`` blocks; a block is an opaque page of
  ``page_bytes`` bytes holding ``block_tokens`` tokens (K/V packing differs between vLLM's CPU and
  CUDA backends, so pages are copied whole and the layout's ``name`` goes into the namespace). A
  chunk's segment for one layer is its blocks' pages back to back.
- ``dense`` (Hugging Face): each layer is a pair of K and V tensors ``[batch, kv_heads, seq,
  head_dim]``; a chunk's segment is K's then V's token slice, head-major.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .._args import check_int
from ..store.keys import Namespace

_PAGED_ONLY = ("block_tokens", "page_bytes")
# Bounds far past any model, small enough that sizes computed from them stay exact in int64
_MAX_LAYERS, _MAX_DIM, _MAX_PAGE = 1 << 16, 1 << 20, 1 << 34
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3": 1, "float8_e5m2": 1,
                "int8": 1, "uint8": 1}


@dataclass(frozen=True)
class KVLayout:
    kind: str                 # "paged" | "dense"
    name: str                 # e.g. "vllm-cpu-paged", "hf-dense"
    num_layers: int
    dtype: str
    kv_heads: int
    head_size: int
    block_tokens: int = 0     # paged only
    page_bytes: int = 0       # paged only: bytes of one block of one layer

    def __post_init__(self) -> None:
        if self.kind not in ("paged", "dense"):
            raise ValueError(f"kind must be 'paged' or 'dense', got {self.kind!r}")
        if not (isinstance(self.name, str) and 1 <= len(self.name) <= 64 and
                self.name.isascii() and self.name.isprintable()):
            raise ValueError(f"KVLayout.name must be 1-64 printable ASCII characters, got "
                             f"{self.name!r:.80}")
        for f, hi in (("num_layers", _MAX_LAYERS), ("kv_heads", _MAX_DIM), ("head_size", _MAX_DIM),
                      ("block_tokens", _MAX_DIM), ("page_bytes", _MAX_PAGE)):
            object.__setattr__(self, f, check_int(f"KVLayout.{f}", getattr(self, f),
                                                  0 if f in _PAGED_ONLY else 1, hi))
        if self.kind == "paged" and (self.block_tokens <= 0 or self.page_bytes <= 0):
            raise ValueError("a paged layout needs block_tokens > 0 and page_bytes > 0")
        if not (isinstance(self.dtype, str) and 1 <= len(self.dtype) <= 16 and
                self.dtype.isascii() and self.dtype.isprintable() and " " not in self.dtype):
            raise ValueError(f"dtype must be a name of 1-16 ASCII characters, got {self.dtype!r}")
        if self.kind == "dense" and self.dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown dtype {self.dtype!r} (one of {sorted(_DTYPE_BYTES)})")

    @classmethod
    def paged(cls, name: str, *, num_layers: int, dtype: str, kv_heads: int, head_size: int,
              block_tokens: int, page_bytes: int) -> KVLayout:
        return cls("paged", name, num_layers, dtype, kv_heads, head_size, block_tokens,
                   page_bytes)

    @classmethod
    def dense(cls, name: str = "hf-dense", *, num_layers: int, dtype: str, kv_heads: int,
              head_size: int) -> KVLayout:
        return cls("dense", name, num_layers, dtype, kv_heads, head_size)

    @property
    def elem_bytes(self) -> int:
        return _DTYPE_BYTES.get(self.dtype, 0)

    def segment_bytes(self, chunk_tokens: int) -> int:
        """Bytes of one layer of one chunk."""
        if self.kind == "paged":
            if chunk_tokens % self.block_tokens:
                raise ValueError(f"chunk_tokens {chunk_tokens} is not a multiple of block_tokens "
                                 f"{self.block_tokens}")
            return chunk_tokens // self.block_tokens * self.page_bytes
        return 2 * self.kv_heads * chunk_tokens * self.head_size * self.elem_bytes

    def namespace(self, model: str, *, chunk_tokens: int = 256, salt: str = "",
                  first_layer: int = 0, first_kv_head: int = 0,
                  extra: Mapping[str, str] | None = None) -> Namespace:
        """The namespace of this layout's objects for ``model`` (see docs/keys.md)."""
        return Namespace(model=model, dtype=self.dtype, num_layers=self.num_layers,
                         kv_heads=self.kv_heads, head_size=self.head_size, layout=self.name,
                         block_tokens=self.block_tokens, page_bytes=self.page_bytes,
                         chunk_tokens=chunk_tokens, first_layer=first_layer,
                         first_kv_head=first_kv_head, salt=salt, extra=dict(extra or {}))


__all__ = ["KVLayout"]
