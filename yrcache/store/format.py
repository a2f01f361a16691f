# SPDX-License-Identifier: Apache-2.0
"""The object format (spec: docs/object_format.md); parsing and checksums run in C++.

One object per (namespace, chunk): a 4 KiB header, then one segment per layer, each starting on a
4 KiB boundary so a single layer can be read alone with O_DIRECT. Everything read back is
validated: magic, version, header checksum, the segment table's geometry, then the caller's
expectations (namespace, key, lengths) and each segment's XXH3 checksum. With a MAC key, a keyed
BLAKE2b tag over the header and over each segment also proves who wrote it.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

from .._args import U32_MAX, check_int
from .._native import _C

_S = _C.store
Header = _S.Header
MAGIC: bytes = _S.MAGIC
FORMAT_VERSION: int = _S.FORMAT_VERSION
ALIGN: int = _S.ALIGN
FLAG_MAC: int = _S.FLAG_MAC
CHECKSUM_IMPL: str = _S.CHECKSUM_IMPL
checksum = _S.checksum
checksums = _S.checksums

#: Limits of the header fields (csrc/store/format.h: kMaxSegments, kMaxDims, kMaxObjectBytes, and
#: u32 chunk_index / token_count, u64 shape dimensions). Checked at the call, in Python, so a bad
#: argument raises there, never later in a writer thread (or as an object no reader accepts).
MAX_SEGMENTS = 4096
MAX_DIMS = 8
MAX_OBJECT_BYTES = 1 << 40
U64_MAX = (1 << 64) - 1


def header_bytes_for(segments: int) -> int:
    """Header size of an object with ``segments`` segments (4 KiB up to 120 of them)."""
    return int(_S.header_bytes_for(check_int("segments", segments, 0, MAX_SEGMENTS)))


class ObjectFormatError(ValueError):
    """An object's bytes are not a valid object for what was asked (a cache miss, not a crash)."""


def align_up(n: int, a: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``a`` (> 0)."""
    if a <= 0:
        raise ValueError(f"alignment must be > 0, got {a}")
    return -(-n // a) * a


def segment_offsets(lengths: Sequence[int]) -> tuple[int, list[int], int]:
    """(header_bytes, segment offsets, object_bytes) of an object with these segment lengths."""
    hb = header_bytes_for(len(lengths))
    at, offs = hb, []
    for i, n in enumerate(lengths):
        offs.append(at)
        at = align_up(at + check_int(f"lengths[{i}]", n, 0, MAX_OBJECT_BYTES))
    return hb, offs, at


def check_fields(*, chunk_index: Any, token_count: Any, dtype: Any, shape: Any,
                 lengths: Sequence[int]) -> tuple[int, ...]:
    """Check an object's header fields against what the format can hold (TypeError for a wrong
    type, ValueError out of range, naming the argument); returns ``shape`` as a tuple."""
    check_int("chunk_index", chunk_index, 0, U32_MAX)
    check_int("token_count", token_count, 1, U32_MAX)
    if not isinstance(dtype, str):
        raise TypeError(f"dtype must be a str, got {type(dtype).__name__}")
    if not 1 <= len(dtype) <= 16 or not dtype.isascii() or not dtype.isprintable() or " " in dtype:
        raise ValueError(f"dtype must be 1-16 printable ASCII characters, got {dtype!r:.60}")
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a sequence of ints, got {type(shape).__name__}")
    if len(shape) > MAX_DIMS:
        raise ValueError(f"shape must be at most {MAX_DIMS} non-negative ints, got {len(shape)}")
    dims = tuple(check_int(f"shape[{i}]", d, 0, U64_MAX) for i, d in enumerate(shape))
    if len(lengths) > MAX_SEGMENTS:
        raise ValueError(f"an object holds at most {MAX_SEGMENTS} segments, got {len(lengths)}")
    total = segment_offsets(lengths)[2]
    if total > MAX_OBJECT_BYTES:
        raise ValueError(f"an object is at most {MAX_OBJECT_BYTES} bytes (readers refuse larger), "
                         f"these segments make {total}")
    return dims


def _mac(key: bytes, *parts: Any) -> bytes:
    h = hashlib.blake2b(key=key, digest_size=16)
    for p in parts:
        h.update(p)
    return h.digest()


def _header_mac_input(buf: memoryview, hb: int) -> bytes:
    b = bytearray(buf[:hb])
    b[_S.MAC_OFFSET:_S.MAC_OFFSET + _S.MAC_LEN] = bytes(_S.MAC_LEN)
    b[_S.HEADER_CHECKSUM_OFFSET:_S.HEADER_CHECKSUM_OFFSET + 8] = bytes(8)
    return bytes(b)


def build_header(out: Any, *, ns: bytes, key: bytes, parent: bytes, chunk_index: int,
                 token_count: int, dtype: str, shape: Sequence[int], segments: Sequence[Any],
                 created_unix_ns: int = 0, mac_key: bytes | None = None) -> Any:
    """Encode the header of an object with these segment buffers into ``out`` (writable, at least
    ``header_bytes``). Returns the Header. Checksums every segment (C++, GIL released)."""
    lengths = [memoryview(s).nbytes for s in segments]
    dims = check_fields(chunk_index=chunk_index, token_count=token_count, dtype=dtype,
                        shape=shape, lengths=lengths)
    h = Header(ns, key, parent, chunk_index, token_count, dtype, list(dims), lengths,
               check_int("created_unix_ns", created_unix_ns, 0, U64_MAX))
    sums = checksums(list(segments))
    for i, c in enumerate(sums):
        tag = int.from_bytes(_mac(mac_key, key, i.to_bytes(4, "little"), segments[i])[:8],
                             "little") if mac_key else 0
        h.set_segment(i, c, tag)
    if mac_key:
        h.flags = FLAG_MAC
    h.encode_into(out)
    if mac_key:
        h.header_mac = _mac(mac_key, _header_mac_input(memoryview(out), h.header_bytes))
        h.encode_into(out)
    return h


def parse_header(buf: Any, *, ns: bytes | None = None, key: bytes | None = None,
                 mac_key: bytes | None = None) -> Any:
    """Parse and validate a header; check namespace, key and (with a MAC key) its tag.
    Raises ObjectFormatError with the reason. Needs the whole header (``header_bytes``)."""
    h, why, need = _S.parse_header(buf)
    if h is None:
        if need:
            raise ObjectFormatError(f"header is {need} bytes, only {memoryview(buf).nbytes} given")
        raise ObjectFormatError(why)
    if ns is not None and h.ns != ns:
        raise ObjectFormatError("namespace mismatch")
    if key is not None and h.key != key:
        raise ObjectFormatError("key mismatch")
    if mac_key is not None:
        if not h.flags & FLAG_MAC:
            raise ObjectFormatError("object has no MAC but the namespace requires one")
        want = _mac(mac_key, _header_mac_input(memoryview(buf), h.header_bytes))
        if not hmac.compare_digest(want, h.header_mac):
            raise ObjectFormatError("header MAC mismatch")
    return h


def verify_segments(h: Any, items: Sequence[tuple[int, Any]], *,
                    mac_key: bytes | None = None) -> None:
    """Check (segment index, bytes) pairs against the header; raise ObjectFormatError on any
    mismatch (length, checksum, MAC)."""
    ok = h.verify(list(items))
    for (i, _), good in zip(items, ok):
        if not good:
            raise ObjectFormatError(f"segment {i} checksum mismatch")
    if mac_key is not None:
        for i, buf in items:
            tag = int.from_bytes(_mac(mac_key, h.key, i.to_bytes(4, "little"), buf)[:8], "little")
            want = h.segment(i)[3].to_bytes(8, "little")
            if not hmac.compare_digest(tag.to_bytes(8, "little"), want):
                raise ObjectFormatError(f"segment {i} MAC mismatch")


def describe(h: Any) -> dict[str, Any]:
    """A JSON-friendly view of a header (for ls/fsck)."""
    if not isinstance(h, Header):
        raise TypeError(f"describe() needs a parsed Header, got {type(h).__name__}")
    return {
        "version": h.version, "namespace": h.ns.hex(), "key": h.key.hex(),
        "parent": h.parent.hex(), "chunk_index": h.chunk_index, "tokens": h.token_count,
        "dtype": h.dtype, "shape": list(h.shape), "object_bytes": h.object_bytes,
        "segments": h.segment_count, "mac": bool(h.flags & FLAG_MAC),
        "created_unix_ns": h.created_unix_ns,
    }


__all__ = [
    "ALIGN",
    "CHECKSUM_IMPL",
    "FORMAT_VERSION",
    "MAGIC",
    "Header",
    "ObjectFormatError",
    "align_up",
    "build_header",
    "checksum",
    "checksums",
    "describe",
    "MAX_DIMS",
    "MAX_OBJECT_BYTES",
    "MAX_SEGMENTS",
    "check_fields",
    "header_bytes_for",
    "parse_header",
    "segment_offsets",
    "verify_segments",
]
