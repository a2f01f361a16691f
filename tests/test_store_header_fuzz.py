# SPDX-License-Identifier: Apache-2.0
"""The header parser under fuzzing (hypothesis): arbitrary bytes never crash it, valid headers
round-trip, any damage is rejected, and the C++ and Python views agree. Payloads are derived
from the key (tests/store_util.py), so any process can check any object byte for byte."""
from __future__ import annotations

import json
import random
import struct

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from yrcache._native import _C
from yrcache.store import format as object_format

_FIELDS = {  # name: (offset, struct format) — csrc/store/format.h, docs/object_format.md
    "version": (8, "<I"), "header_bytes": (12, "<I"), "object_bytes": (64, "<Q"),
    "chunk_index": (72, "<I"), "token_count": (76, "<I"), "segment_count": (80, "<I"),
    "flags": (84, "<I"), "checksum_algo": (88, "<I"), "ndim": (92, "<I"),
    "created": (176, "<Q"), "header_checksum": (248, "<Q"),
}


_BLOBS = {"magic": (0, 8), "ns": (16, 16), "key": (32, 16), "parent": (48, 16),
          "dtype": (96, 16), "shape": (112, 64), "reserved": (184, 48), "header_mac": (232, 16)}


def _parse_both(buf: bytes):
    """(C result tuple, python header or the ObjectFormatError). Anything else propagates."""
    c = _C.store.parse_header(buf)
    assert isinstance(c, tuple) and len(c) == 3
    try:
        p = object_format.parse_header(buf)
    except object_format.ObjectFormatError as e:
        p = e
    # the two agree on accept/reject
    assert (c[0] is None) == isinstance(p, object_format.ObjectFormatError), (c, p)
    return c, p


def _fix_checksum(b: bytearray, hb: int) -> None:
    b[248:256] = bytes(8)
    b[248:256] = struct.pack("<Q", object_format.checksum(bytes(b[:hb])))


def _assert_consistent(h) -> None:
    """What any accepted header must satisfy, whatever its bytes."""
    n = h.segment_count
    assert h.version == object_format.FORMAT_VERSION
    assert h.header_bytes == object_format.header_bytes_for(n)
    assert 0 < h.token_count
    assert 1 <= len(h.dtype) <= 16 and all(0x21 <= ord(c) <= 0x7E for c in h.dtype)
    assert len(h.shape) <= 8
    assert h.object_bytes % object_format.ALIGN == 0 and h.object_bytes <= 1 << 40
    lens = [h.segment(i)[1] for i in range(n)]
    hb, offs, total = object_format.segment_offsets(lens)
    assert hb == h.header_bytes and total == h.object_bytes
    assert [h.segment(i)[0] for i in range(n)] == offs
    for o, ln in zip(offs, lens):
        assert o + ln <= h.object_bytes


@st.composite
def header_specs(draw):
    many = draw(st.booleans())
    nseg = draw(st.integers(118, 126)) if many else draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    r = random.Random(seed)
    lengths = [r.choice([0, 1, 100, 4095, 4096, 4097, 9000]) for _ in range(nseg)]
    return {
        "ns": draw(st.binary(min_size=16, max_size=16)),
        "key": draw(st.binary(min_size=16, max_size=16)),
        "parent": draw(st.binary(min_size=16, max_size=16)),
        "chunk_index": draw(st.integers(0, 2**32 - 1)),
        "token_count": draw(st.integers(1, 2**32 - 1)),
        "dtype": draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                           max_size=16)),
        "shape": draw(st.lists(st.integers(0, 2**64 - 1), max_size=8)),
        "created_unix_ns": draw(st.integers(0, 2**64 - 1)),
        "segments": [bytes(r.getrandbits(8) for _ in range(n)) if n < 200 else r.randbytes(n)
                  for n in lengths],
        "mac_key": draw(st.one_of(st.none(), st.binary(min_size=16, max_size=64))),
    }


def _build(spec: dict) -> tuple[bytearray, object]:
    hb = object_format.header_bytes_for(len(spec["segments"]))
    out = bytearray(hb)
    h = object_format.build_header(out, **spec)
    assert h.header_bytes == hb
    return out, h


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow,
                                                          HealthCheck.data_too_large]}


@settings(max_examples=400, **_SETTINGS)
@given(st.binary(max_size=9000))
def test_parse_arbitrary_bytes_never_crashes(buf):
    c, _p = _parse_both(buf)
    if c[0] is not None:  # astronomically unlikely, but then it must be self-consistent
        _assert_consistent(c[0])
    elif c[2]:
        assert c[2] > len(buf) and c[2] % object_format.ALIGN == 0


@settings(max_examples=300, **_SETTINGS)
@given(st.one_of(st.integers(0, 300), st.integers(4088, 8500)), st.integers(0, 2**64 - 1),
       st.one_of(st.integers(0, 130), st.integers(0, 4096 * 2 - 1)), st.booleans())
def test_parse_arbitrary_bytes_with_valid_magic_never_crashes(size, seed, nseg, deep):
    """Random bytes behind a valid magic, with plausible version, sizes and (when it fits) a valid
    header checksum, so the parser's geometry checks see arbitrary values."""
    b = bytearray(object_format.MAGIC + random.Random(seed).randbytes(size))
    hb = object_format.header_bytes_for(min(nseg, 4096))
    if len(b) >= 100:
        b[8:12] = struct.pack("<I", 1)
        b[80:84] = struct.pack("<I", nseg)
        b[12:16] = struct.pack("<I", hb)
        if deep:  # get past the algorithm/flags/token/ndim/dtype checks
            b[84:88] = struct.pack("<I", 0)
            b[88:92] = struct.pack("<I", 1)
            b[76:80] = struct.pack("<I", 1 + b[76] % 200)
            b[92:96] = struct.pack("<I", b[92] % 9)
            b[96:100] = b"bf16"
            b[100:112] = bytes(12) if len(b) >= 112 else b[100:112]
            if len(b) >= 272:  # a possible object size, and segment 0 where it belongs
                b[64:72] = struct.pack("<Q", hb + 4096 * (b[64] % 64))
                b[256:264] = struct.pack("<Q", hb)
                b[264:272] = struct.pack("<Q", b[264] * 97)
        if len(b) >= 256 and len(b) >= hb:
            _fix_checksum(b, hb)
    c, _p = _parse_both(bytes(b))
    event("accepted" if c[0] is not None else " ".join(c[1].split(" ")[:2]))
    if c[0] is not None:
        _assert_consistent(c[0])


@settings(max_examples=150, **_SETTINGS)
@given(header_specs())
def test_valid_headers_round_trip(spec):
    out, h = _build(spec)
    for buf in (bytes(out), bytes(out) + b"\xff" * 100, bytearray(out), memoryview(out)):
        p = object_format.parse_header(buf, ns=spec["ns"], key=spec["key"], mac_key=spec["mac_key"])
        assert p.ns == spec["ns"] and p.key == spec["key"] and p.parent == spec["parent"]
        assert p.chunk_index == spec["chunk_index"] and p.token_count == spec["token_count"]
        assert p.dtype == spec["dtype"] and list(p.shape) == spec["shape"]
        assert p.created_unix_ns == spec["created_unix_ns"]
        assert p.segment_count == len(spec["segments"])
        assert bool(p.flags & object_format.FLAG_MAC) == (spec["mac_key"] is not None)
        assert p.header_bytes == h.header_bytes == len(out)
        assert p.object_bytes == h.object_bytes
        for i, seg in enumerate(spec["segments"]):
            assert p.segment(i) == h.segment(i)
            assert p.segment(i)[1] == len(seg) and p.segment(i)[2] == object_format.checksum(seg)
        _assert_consistent(p)
        object_format.verify_segments(p, list(enumerate(spec["segments"])), mac_key=spec["mac_key"])
    d = object_format.describe(p)
    assert json.loads(json.dumps(d)) == d
    # a truncated header: rejected, or "need more" with the right size
    for n in sorted({0, 1, 255, 256, 4095, len(out) - 1} - {len(out)}):
        if n < 0 or n >= len(out):
            continue
        c, _pp = _parse_both(bytes(out[:n]))
        assert c[0] is None
        # from 256 bytes on the declared size is readable: "need more", the whole header
        assert c[2] == (len(out) if n >= 256 else 0), (n, c)
    # wrong namespace / key / mac key are rejected
    with pytest.raises(object_format.ObjectFormatError):
        other_ns = bytes(16) if spec["ns"] != bytes(16) else b"\1" * 16
        object_format.parse_header(bytes(out), ns=other_ns)
    with pytest.raises(object_format.ObjectFormatError):
        other_key = bytes(16) if spec["key"] != bytes(16) else b"\1" * 16
        object_format.parse_header(bytes(out), key=other_key)
    with pytest.raises(object_format.ObjectFormatError):
        other_mac = b"z" * 16 if spec["mac_key"] != b"z" * 16 else b"y" * 16
        object_format.parse_header(bytes(out), mac_key=other_mac)


@settings(max_examples=150, **_SETTINGS)
@given(header_specs(), st.data())
def test_any_single_bit_flip_is_rejected(spec, data):
    out, _h = _build(spec)
    hb = len(out)
    pos = data.draw(st.integers(0, hb - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    bad = bytearray(out)
    bad[pos] ^= 1 << bit
    c, _p = _parse_both(bytes(bad))
    assert c[0] is None, f"flip of bit {bit} at byte {pos} accepted"
    # a few more flips elsewhere: still rejected
    extra = data.draw(st.lists(st.integers(0, hb - 1), max_size=6), label="more")
    for q in extra:
        bad[q] ^= 0x10
    c, _p = _parse_both(bytes(bad))
    assert c[0] is None or bytes(bad) == bytes(out)


@settings(max_examples=300, **_SETTINGS)
@given(header_specs(), st.data())
def test_field_overwrites(spec, data):
    """Overwrite a fixed field (or a segment-table word) with an arbitrary value: rejected unless
    the bytes did not change; with the header checksum recomputed (a buggy or hostile writer), the
    parser accepts only self-consistent geometry."""
    out, h = _build(spec)
    hb = len(out)
    bad = bytearray(out)
    kind = data.draw(st.sampled_from(["field", "blob", "segword"]), label="kind")
    if kind == "field":
        name = data.draw(st.sampled_from(sorted(_FIELDS)), label="field")
        off, fmt = _FIELDS[name]
        size = struct.calcsize(fmt)
        interesting = [0, 1, 2**(8 * size) - 1, 2**(8 * size - 1), 4096, 8192, 4095, 4097,
                       h.object_bytes, h.header_bytes, h.segment_count + 1, 121, 4096 * 3]
        v = data.draw(st.one_of(st.sampled_from(interesting), st.integers(0, 2**(8 * size) - 1)),
                      label="value")
        bad[off:off + size] = struct.pack(fmt, v % 2**(8 * size))
    elif kind == "blob":
        name = data.draw(st.sampled_from(sorted(_BLOBS)), label="blob")
        off, size = _BLOBS[name]
        bad[off:off + size] = data.draw(st.binary(min_size=size, max_size=size), label="bytes")
    else:
        if h.segment_count == 0:
            return
        i = data.draw(st.integers(0, h.segment_count - 1), label="segment")
        w = data.draw(st.integers(0, 3), label="word")
        v = data.draw(st.one_of(st.integers(0, 2**64 - 1),
                                st.sampled_from([0, 1, 4096, 2**64 - 1, 2**63, h.object_bytes,
                                                 h.object_bytes - 4096, h.object_bytes + 4096])),
                      label="value")
        at = 256 + 32 * i + 8 * w
        bad[at:at + 8] = struct.pack("<Q", v)
    c, p = _parse_both(bytes(bad))
    if bytes(bad) == bytes(out):
        assert c[0] is not None
    else:
        assert c[0] is None, "a changed header passed its checksum"
    # Now as a writer that recomputes the checksum would: accepted only when self-consistent.
    _fix_checksum(bad, hb)
    c, p = _parse_both(bytes(bad))
    event("re-checksummed: accepted" if c[0] is not None else
          f"re-checksummed: {c[1].split(' ')[0]} ...")
    if c[0] is not None:
        _assert_consistent(c[0])
        if not isinstance(p, object_format.ObjectFormatError):
            _assert_consistent(p)
    elif c[2]:
        assert c[2] > hb


def test_parse_header_rejects_non_buffers_cleanly():
    for bad in (None, 3, "YRCKVOBJ" * 600, [1, 2, 3]):
        with pytest.raises((TypeError, object_format.ObjectFormatError)):
            object_format.parse_header(bad)
