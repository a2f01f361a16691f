# SPDX-License-Identifier: Apache-2.0
"""Content addresses for KV chunks: namespaces and chained prefix keys (spec: docs/keys.md).

A prompt is cut into chunks of ``chunk_tokens`` tokens. Chunk ``i``'s key is
``BLAKE2b-128(key[i-1] || token ids of chunk i as little-endian uint32)``; the chain starts from
the namespace digest, optionally folded with request extras (LoRA, multimodal hashes, cache salt)
that change the KV without changing the token ids. Deterministic across processes, machines and
Python versions (never ``hash()``), and collision-resistant, since one shared root may serve
several tenants.

>>> ns = Namespace(model="llama-3-8b@abc123", dtype="bfloat16", num_layers=32, kv_heads=8,
...                head_size=128, layout="vllm-cuda-paged", block_tokens=16, page_bytes=65536)
>>> keys = chain_keys(ns.digest, list(range(600)), ns.chunk_tokens)   # 2 full chunks of 256
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from .._args import DIGEST_BYTES, check_digest, check_int

#: Version of the key derivation rules in this module (docs/keys.md). Part of every namespace.
KEY_SPEC_VERSION = 1
#: Object format version (docs/object_format.md). Part of every namespace.
FORMAT_VERSION = 1
#: bound on a namespace's canonical JSON (model names, salts, extras are short; a huge one is a bug)
MAX_NAMESPACE_BYTES = 64 << 10
#: integer fields fit a signed 64-bit integer wherever they end up
_INT_MAX = (1 << 63) - 1

_NS_DOMAIN = b"yrcache/namespace/v1\x00"
_EXTRA_DOMAIN = b"yrcache/extra/v1\x00"


def _h(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


@dataclass(frozen=True)
class Namespace:
    """Everything that changes the stored bytes of a chunk. Two servers share objects exactly when
    their namespaces are equal, field for field.

    model: model identity, including a revision or weights hash where the name alone is ambiguous.
    dtype: KV dtype as stored ("bfloat16", "float16", "fp8_e4m3", ...).
    num_layers / first_layer: the layers this worker holds (a pipeline stage holds a range).
    kv_heads / first_kv_head: the KV heads this worker holds (tensor parallel ranks hold a range).
    head_size: per-head dimension.
    layout: the engine layout's name ("vllm-cpu-paged", "hf-dense"...).
    block_tokens / page_bytes: paged-KV geometry (0 for dense layouts).
    chunk_tokens: tokens per chunk (one object per chunk).
    salt: optional tenant salt: roots shared between tenants stay disjoint.
    extra: any other setting that changes the bytes (e.g. {"mla": "1", "quant": "..."}).
    """

    model: str
    dtype: str
    num_layers: int
    kv_heads: int
    head_size: int
    layout: str
    block_tokens: int = 0
    page_bytes: int = 0
    chunk_tokens: int = 256
    first_layer: int = 0
    first_kv_head: int = 0
    salt: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    key_spec_version: int = KEY_SPEC_VERSION

    def __post_init__(self) -> None:
        for name in ("model", "dtype", "layout"):
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"Namespace.{name} must be a str, got {type(v).__name__}")
            if not v:
                raise ValueError(f"Namespace.{name} must be a non-empty str")
        for name, lo in (("num_layers", 1), ("kv_heads", 1), ("head_size", 1),
                         ("chunk_tokens", 1), ("block_tokens", 0), ("page_bytes", 0),
                         ("first_layer", 0), ("first_kv_head", 0), ("format_version", 0),
                         ("key_spec_version", 0)):   # plain ints: they go into canonical JSON
            object.__setattr__(self, name, check_int(f"Namespace.{name}", getattr(self, name),
                                                     lo, _INT_MAX))
        if self.block_tokens and self.chunk_tokens % self.block_tokens:
            raise ValueError(f"chunk_tokens ({self.chunk_tokens}) must be a multiple of "
                             f"block_tokens ({self.block_tokens})")
        if not isinstance(self.salt, str):
            raise TypeError(f"Namespace.salt must be a str, got {type(self.salt).__name__}")
        if not isinstance(self.extra, Mapping):
            raise TypeError(f"Namespace.extra must be a mapping of str to str (or {{}}), got "
                            f"{type(self.extra).__name__}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.extra.items()):
            raise TypeError("Namespace.extra must map str to str")
        object.__setattr__(self, "extra", dict(sorted(self.extra.items())))
        n = len(self.canonical())
        if n > MAX_NAMESPACE_BYTES:  # it is written to namespace.json, read back by tools
            raise ValueError(f"Namespace is too large: {n} bytes of canonical JSON, at most "
                             f"{MAX_NAMESPACE_BYTES}")

    def __hash__(self) -> int:  # `extra` is a dict: hash the digest, which covers every field
        return hash(self.digest)

    def canonical(self) -> bytes:
        """The bytes the digest is taken over: JSON, sorted keys, no whitespace, ASCII only."""
        d: dict[str, Any] = asdict(self)
        return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def digest(self) -> bytes:
        """16-byte namespace digest: ``BLAKE2b-128("yrcache/namespace/v1\\0" || canonical())``."""
        return _h(_NS_DOMAIN + self.canonical())

    @property
    def hex(self) -> str:
        return self.digest.hex()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> Namespace:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError("namespace JSON must be an object")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"namespace JSON has unknown fields {sorted(unknown)}")
        return cls(**d)


def fold_extras(root: bytes, extras: Mapping[str, bytes | str] | None) -> bytes:
    """The chain's starting point for a request: ``root`` (a namespace digest) with request inputs
    that change the KV but not the token ids folded in (LoRA adapter id, multimodal item hashes,
    prompt-embedding digests, a per-request cache salt). No extras: ``root`` unchanged.

    ``BLAKE2b-128("yrcache/extra/v1\\0" || root || for each (name, value) sorted by name:
    u32 len(name) || name || u32 len(value) || value)``, strings as UTF-8.
    """
    check_digest("root", root)
    if extras is not None and not isinstance(extras, Mapping):
        raise TypeError(f"extras must be a mapping of names to str/bytes, got "
                        f"{type(extras).__name__}")
    if not extras:
        return bytes(root)
    parts = [_EXTRA_DOMAIN, root]
    for name in sorted(extras):
        if not isinstance(name, str):
            raise TypeError(f"extra names must be str, got {type(name).__name__}")
        v = extras[name]
        if not isinstance(v, (str, bytes, bytearray)):  # bytes(3) would be b"\0\0\0"
            raise TypeError(f"extra {name!r} must be str or bytes, got {type(v).__name__}")
        vb = v.encode() if isinstance(v, str) else bytes(v)
        nb = name.encode()
        parts += [len(nb).to_bytes(4, "little"), nb, len(vb).to_bytes(4, "little"), vb]
    return _h(b"".join(parts))


def as_token_array(token_ids: Sequence[int] | np.ndarray | Any) -> np.ndarray:
    """Token ids as a contiguous little-endian uint32 array; ids outside [0, 2**32) are refused."""
    if hasattr(token_ids, "numpy") and not isinstance(token_ids, np.ndarray):  # torch tensors
        token_ids = token_ids.detach().cpu().numpy()
    arr = np.asarray(token_ids)
    if arr.ndim != 1:
        raise ValueError(f"token_ids must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype="<u4")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"token_ids must be integers, got dtype {arr.dtype}")
    if (arr.dtype.kind == "i" and int(arr.min()) < 0) or int(arr.max()) > 0xFFFFFFFF:
        raise ValueError("token ids must be in [0, 2**32)")
    return np.ascontiguousarray(arr, dtype="<u4")


def chain_keys(root: bytes, token_ids: Sequence[int] | np.ndarray | Any, chunk_tokens: int,
               *, max_chunks: int | None = None) -> list[bytes]:
    """Keys of the full chunks of ``token_ids`` (a partial tail chunk has none), starting from
    ``root`` (a namespace digest, or :func:`fold_extras` of one)."""
    check_digest("root", root)
    chunk_tokens = check_int("chunk_tokens", chunk_tokens, 1, _INT_MAX)
    if max_chunks is not None:
        max_chunks = check_int("max_chunks", max_chunks)
    arr = as_token_array(token_ids)
    n = arr.size // chunk_tokens
    if max_chunks is not None:
        n = min(n, max_chunks)
    raw = memoryview(arr[: n * chunk_tokens].tobytes())
    step = chunk_tokens * 4
    keys: list[bytes] = []
    prev = bytes(root)
    for i in range(n):
        h = hashlib.blake2b(prev, digest_size=DIGEST_BYTES)
        h.update(raw[i * step:(i + 1) * step])
        prev = h.digest()
        keys.append(prev)
    return keys


_HEX_DIGEST = re.compile(f"[0-9a-f]{{{2 * DIGEST_BYTES}}}")


def is_hex_digest(s: str) -> bool:
    """True for exactly 32 lowercase hex characters: the only strings that become path parts."""
    return _HEX_DIGEST.fullmatch(s) is not None


__all__ = ["DIGEST_BYTES", "FORMAT_VERSION", "KEY_SPEC_VERSION", "Namespace", "as_token_array",
           "chain_keys", "fold_extras", "is_hex_digest"]
