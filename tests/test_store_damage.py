# SPDX-License-Identifier: Apache-2.0
"""Corruption: every damaged object is a miss (then removed), never an exception, never data; an
object of another geometry is a miss too. Payloads are derived from the key
(tests/store_util.py), so any process can check any object byte for byte."""
from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import yrcache
from yrcache.store import format as object_format
from yrcache.store import paths
from yrcache.store.store import Store

from . import store_util


def _rewrite(path: str, data: bytes) -> None:
    # Replace the file's contents in place (same inode), as bit rot or a torn write would.
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def _flip_bits(raw: bytearray, offsets: list[int], rng: random.Random) -> None:
    for off in offsets:
        raw[off] ^= 1 << rng.randrange(8)


def _segment_data_offsets(key: bytes) -> list[tuple[int, int]]:
    _, offs, _ = object_format.segment_offsets(store_util.geometry(key))
    return list(zip(offs, store_util.geometry(key)))


def _corrupt(case: str, path: str, key: bytes, rng: random.Random, ctx: dict) -> None:
    raw = bytearray(Path(path).read_bytes())
    size = len(raw)
    if case == "header_bitflip":
        _flip_bits(raw, [rng.randrange(4096)], rng)
    elif case == "header_fixed_field_bitflip":
        _flip_bits(raw, [rng.randrange(256)], rng)
    elif case == "segment_table_bitflip":
        nseg = len(store_util.geometry(key))
        _flip_bits(raw, [256 + rng.randrange(32 * nseg)], rng)
    elif case == "header_many_flips":
        _flip_bits(raw, rng.sample(range(4096), rng.randint(2, 40)), rng)
    elif case == "segment_bitflip":
        segs = [s for s in _segment_data_offsets(key) if s[1] > 0]
        off, n = rng.choice(segs)
        _flip_bits(raw, [off + rng.randrange(n)], rng)
    elif case == "segment_many_flips":
        for off, n in _segment_data_offsets(key):
            _flip_bits(raw, rng.sample(range(off, off + n), min(n, 5)), rng)
    elif case == "last_byte_of_segment_flip":
        off, n = _segment_data_offsets(key)[-1]
        _flip_bits(raw, [off + n - 1], rng)
    elif case == "bad_magic":
        raw[0:8] = b"YRCKVOBK"
    elif case.startswith("truncate_"):
        what = case[len("truncate_"):]
        to = {"0": 0, "1": 1, "100": 100, "255": 255, "256": 256, "mid_header": 2000,
              "4095": 4095, "header_only": 4096, "minus1": size - 1,
              "minus_page": size - 4096,
              "mid_segment": rng.randrange(4097, size - 1)}[what]
        del raw[to:]
    elif case == "extend_1":
        raw += b"\0"
    elif case == "extend_page":
        raw += bytes(4096)
    elif case == "zero_filled":
        raw = bytearray(size)
    elif case == "zero_first_segment_page":
        off, _ = _segment_data_offsets(key)[0]
        raw[off:off + 4096] = bytes(4096)
    elif case == "garbage_header":
        raw[0:4096] = rng.randbytes(4096)
    elif case == "garbage_header_keep_magic":
        raw[8:4096] = rng.randbytes(4088)
    elif case == "foreign_random_file":
        raw = bytearray(rng.randbytes(rng.choice([1, 300, 4096, 10000, size])))
    elif case == "foreign_text_file":
        raw = bytearray(b"this is not a KV object\n" * 50)
    elif case == "other_key_object":
        raw = bytearray(Path(ctx["other_key_path"]).read_bytes())
    elif case == "other_namespace_object":
        raw = bytearray(Path(ctx["other_ns_path"]).read_bytes())
    elif case == "swapped_segments":  # two equal-length segments exchanged: checksums catch it
        (o0, n0), (o1, n1) = _segment_data_offsets(key)[:2]
        assert n0 == n1
        a, b = bytes(raw[o0:o0 + n0]), bytes(raw[o1:o1 + n1])
        assert a != b
        raw[o0:o0 + n0], raw[o1:o1 + n1] = b, a
    elif case == "mac_less_writer":
        raw = bytearray(Path(ctx["nomac_path"]).read_bytes())
    elif case == "wrong_mac_key":
        raw = bytearray(Path(ctx["wrongmac_path"]).read_bytes())
    else:  # pragma: no cover
        raise AssertionError(case)
    assert bytes(raw) != Path(path).read_bytes(), case
    _rewrite(path, bytes(raw))


CORRUPTIONS = [
    "header_bitflip", "header_fixed_field_bitflip", "segment_table_bitflip", "header_many_flips",
    "segment_bitflip", "segment_many_flips", "last_byte_of_segment_flip", "bad_magic",
    "truncate_0", "truncate_1", "truncate_100", "truncate_255", "truncate_256",
    "truncate_mid_header", "truncate_4095", "truncate_header_only", "truncate_minus1",
    "truncate_minus_page", "truncate_mid_segment", "extend_1", "extend_page", "zero_filled",
    "zero_first_segment_page", "garbage_header", "garbage_header_keep_magic",
    "foreign_random_file", "foreign_text_file", "other_key_object", "other_namespace_object",
    "swapped_segments",
]


MAC_CORRUPTIONS = ["mac_less_writer", "wrong_mac_key"]


MAC_KEY = b"k" * 32


def _victim_key(i: int) -> bytes:
    # Keys with >= 2 segments of one length > 4096 (so truncations and swaps are meaningful).
    j = 0
    while True:
        k = store_util.make_key("victim", i, j)
        g = store_util.geometry(k)
        if len(g) >= 2 and g[0] == g[1] and g[0] > 4096:
            return k
        j += 1


@pytest.mark.parametrize("mac", [False, True], ids=["plain", "mac"])
def test_corruption_is_a_miss(data_dir, mac):
    rng = random.Random(7 + mac)
    mac_key = MAC_KEY if mac else None
    root = data_dir / "root"
    s = store_util.open_store(root, mac_key=mac_key)
    good = [store_util.make_key("good", i) for i in range(12)]
    assert all(f.result(timeout=60) for f in [store_util.put(s, k) for k in good])
    # Donor objects for the "valid object, wrong place" cases.
    donor_root = data_dir / "donor"
    ctx: dict[str, str] = {}
    cases = CORRUPTIONS + (MAC_CORRUPTIONS if mac else [])
    victims = {c: _victim_key(i) for i, c in enumerate(cases)}
    other_ns = yrcache.store.keys.Namespace(model="other", dtype=store_util.DTYPE, num_layers=4,
                                            kv_heads=2,
                                      head_size=64, layout="test-dense")
    with store_util.open_store(donor_root, mac_key=mac_key) as donor, \
            Store(donor_root, other_ns, janitor_period=0, mac_key=mac_key) as donor_ns, \
            store_util.open_store(data_dir / "nomac") as nomac, \
            store_util.open_store(data_dir / "wrongmac", mac_key=b"w" * 32) as wrongmac:
        for c, k in victims.items():
            other = store_util.make_key("donor-other", c)
            assert donor.put(other, store_util.segments(k), **store_util.put_kwargs(k)).result()
            assert donor_ns.put(k, store_util.segments(k), **store_util.put_kwargs(k)).result()
            assert nomac.put(k, store_util.segments(k), **store_util.put_kwargs(k)).result()
            assert wrongmac.put(k, store_util.segments(k), **store_util.put_kwargs(k)).result()
    # ^ "other" carries k's segments under another key: a self-consistent object, wrong key.

    def donor_paths(c: str, k: bytes) -> dict[str, str]:
        other = store_util.make_key("donor-other", c)
        return {
            "other_key_path": os.path.join(donor_root, store_util.namespace().hex,
                                           paths.object_relpath(other.hex())),
            "other_ns_path": os.path.join(donor_root, other_ns.hex, paths.object_relpath(k.hex())),
            "nomac_path": os.path.join(data_dir / "nomac", store_util.namespace().hex,
                                       paths.object_relpath(k.hex())),
            "wrongmac_path": os.path.join(data_dir / "wrongmac", store_util.namespace().hex,
                                          paths.object_relpath(k.hex())),
        }

    n_reads = 0
    try:
        for case in cases:
            k = victims[case]
            ctx = donor_paths(case, k)
            for mode in ("verify", "get", "get_lengths"):
                # a fresh good object, then the damage
                assert store_util.put(s, k, dedup=False).result(), case
                r, ok = store_util.check_get(s, k)
                assert r.ok and ok, (case, r.reason)
                path = s.path_of(k)
                _corrupt(case, path, k, rng, ctx)
                before = s.stats()
                if mode == "verify":
                    r = s.verify(k)
                    assert not r.ok and r.reason.startswith(store_util.OK_MISS), \
                        (case, mode, r.reason)
                    assert os.path.exists(path), "verify must not remove"
                else:
                    r, data_ok = store_util.check_get(s, k, use_lengths=(mode == "get_lengths"))
                    assert not r and r.ok is False, (case, mode)
                    assert data_ok is None
                    assert r.reason.startswith(store_util.OK_MISS), (case, mode, r.reason)
                    after = s.stats()
                    is_corrupt = r.reason.startswith("corrupt")
                    assert after["corrupt"] - before["corrupt"] == int(is_corrupt), (case, mode)
                    assert after["misses"] - before["misses"] == 1
                    assert after["hits"] == before["hits"]
                    assert after["errors_by_errno"] == before["errors_by_errno"]
                    if is_corrupt:  # removed: the next writer republishes it
                        assert not os.path.lexists(path), (case, mode)
                    # a second read of the same key is a miss too (missing or corrupt again)
                    r2, _ = store_util.check_get(s, k, use_lengths=(mode == "get"))
                    assert not r2.ok and r2.reason.startswith(store_util.OK_MISS)
                # lookup never crashes (a damaged file may still "exist" for lookup)
                assert s.lookup([k]) in (0, 1)
                assert s.lookup([good[0], k, good[1]]) in (1, 2, 3)
                # readers of other objects keep working
                g = rng.choice(good)
                r, ok = store_util.check_get(s, g, use_lengths=rng.random() < 0.5)
                assert r.ok and ok, (case, g.hex(), r.reason)
                n_reads += 1
                if os.path.lexists(path):
                    os.unlink(path)
        assert n_reads == 3 * len(cases)
        # everything good is still good, and a full-tree check agrees
        for g in good:
            r, ok = store_util.check_get(s, g)
            assert r.ok and ok
            assert s.verify(g).ok
        assert s.stats()["corrupt"] > 0
    finally:
        s.close()
