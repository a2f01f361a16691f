# SPDX-License-Identifier: Apache-2.0
"""Safety of the object store under crashes, corruption, I/O errors, a full file system and a
shared (MooseFS) root: readers see only misses or byte-exact objects, never partial ones, never
exceptions for what they find on disk. Payloads are derived from the key (tests/store_util.py), so
any process can check any object byte for byte."""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import yrcache
from yrcache.store import format as F
from yrcache.store import paths as L
from yrcache._native import _C
from yrcache.store.janitor import HOST_TAG
from yrcache.store.store import Store

from . import store_util as U
from .conftest import REPO, run_child

OK_MISS = ("corrupt", "missing")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _open_store(root, **kw) -> Store:
    kw.setdefault("janitor_period", 0)
    # These tests damage objects in place, which never happens to a published object (objects
    # are replaced by rename). A store holding an object open re-reads its segments (and checks
    # them) but not its header until handle_ttl passes: without open handles every read here
    # starts from the file. test_store.py covers reads through open handles.
    kw.setdefault("handle_ttl", 0)
    return Store(root, U.namespace(), **kw)


# ------------------------------------------------------------------------------------------------
# 1. kill -9 of a writer at random points
# ------------------------------------------------------------------------------------------------
def _wait_line(path: Path, prefix: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().split("\n")[:-1]:  # complete lines only
                if line.startswith(prefix):
                    return line
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    raise AssertionError(f"child never printed {prefix!r}: rc={proc.poll()} "
                         f"out={path.read_text() if path.exists() else ''!r}")


def _ok_keys(out_text: str) -> set[bytes]:
    # Only complete lines: the kill may land in the middle of a print.
    lines = out_text.split("\n")[:-1]
    return {bytes.fromhex(ln[3:]) for ln in lines if ln.startswith("ok ") and len(ln) == 35}


def _check_root_after_kill(root: Path, keys_of_round: set[bytes], reported: set[bytes],
                           dead_pid: int, check_all: bool, other_view: Path | None = None) -> int:
    """Checks after a writer died; returns how many of its temp files were left and reclaimed."""
    left = U.tmp_files(root)
    for name in left:  # only the dead writer can have left temp files (one writer per round)
        assert name.startswith(f"{HOST_TAG}-{dead_pid}-") and name.endswith(L.TMP_SUFFIX), left
    foreign: list = []
    objs = U.walk(root, foreign)
    assert foreign == [], foreign
    ns_hex = U.namespace().hex
    visible = {bytes.fromhex(o.key_hex): o for o in objs}
    assert all(o.ns_hex == ns_hex for o in objs)
    # Nothing partial is ever visible: full size, and the bytes at the format's offsets are the
    # deterministic payload (read independently of the store's reader).
    for k, o in visible.items():
        assert o.size == U.object_bytes(k), (k.hex(), o.size)
    # Every put the child saw succeed is published.
    missing = reported - visible.keys()
    assert not missing, f"{len(missing)} acknowledged objects are not visible"
    # A new store on the root reclaims the dead writer's temp files (its pid is gone).
    with _open_store(root) as s:
        assert s.stats()["tmp_reclaimed"] == len(left)
        assert U.tmp_files(root) == []
        todo = visible.keys() if check_all else (visible.keys() & keys_of_round)
        for k in todo:
            assert U.read_object_file(s.path_of(k), k), k.hex()
            r = s.verify(k)
            assert r.ok, (k.hex(), r.reason)
        st_ = s.stats()
        assert st_["corrupt"] == 0 and st_["misses"] == 0
    if other_view is not None:  # the same objects through the other mount
        with _open_store(other_view) as s:
            for k in (visible.keys() & keys_of_round):
                r, data_ok = U.check_get(s, k)
                assert r.ok and data_ok, (k.hex(), r.reason)
    return len(left)


def _kill_rounds(root: Path, rounds: int, seed: int, max_delay: float,
                 other_view: Path | None = None) -> tuple[int, int]:
    rng = random.Random(seed)
    reclaimed = 0
    total_acked = 0
    for r in range(rounds):
        out = root.parent / f"{root.name}-writer-{r}.out"
        start = r * 1000
        code = U.writer_code(root=str(root), tag="kill", start=start, stop=start + 600, depth=4,
                             threads=4, rewrite=True, seed=seed + r, linger=True)
        errf = root.parent / f"{root.name}-writer-{r}.err"
        with open(out, "w") as fo, open(errf, "w") as fe:
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=fo, stderr=fe,
                                    env=_child_env(), cwd="/")
        try:
            line = _wait_line(out, "ready", proc)
            pid = int(line.split()[1])
            assert pid == proc.pid
            time.sleep(rng.uniform(0.0, max_delay))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
        err = errf.read_text()
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)  # killed mid-run
        assert "Traceback" not in err, err
        reported = _ok_keys(out.read_text())
        total_acked += len(reported)
        keys_of_round = {U.make_key("kill", i) for i in range(start, start + 600)}
        reclaimed += _check_root_after_kill(root, keys_of_round, reported, proc.pid,
                                            check_all=(r == rounds - 1), other_view=other_view)
    return reclaimed, total_acked


@pytest.mark.slow
def test_kill9_writer_local(data_dir):
    root = data_dir / "root"
    reclaimed, acked = _kill_rounds(root, rounds=15, seed=1234, max_delay=0.6)
    # The kills must have hit writes in flight (else nothing above tested a crash mid-write) and
    # the writer must have made progress before some of them.
    assert reclaimed > 0, "no kill left a temp file behind: the test did not exercise a crash"
    assert acked > 0


@pytest.mark.slow
def test_kill9_writer_moosefs(shared_dirs):
    dir_a, dir_b = shared_dirs
    reclaimed, acked = _kill_rounds(dir_a / "root", rounds=6, seed=99, max_delay=0.8,
                                    other_view=dir_b / "root")
    assert reclaimed > 0 and acked > 0


# ------------------------------------------------------------------------------------------------
# 2. corruption: every damaged object is a miss, never an exception, never data
# ------------------------------------------------------------------------------------------------
def _rewrite(path: str, data: bytes) -> None:
    # Replace the file's contents in place (same inode), as bit rot or a torn write would.
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def _flip_bits(raw: bytearray, offsets: list[int], rng: random.Random) -> None:
    for off in offsets:
        raw[off] ^= 1 << rng.randrange(8)


def _segment_data_offsets(key: bytes) -> list[tuple[int, int]]:
    _, offs, _ = F.segment_offsets(U.geometry(key))
    return list(zip(offs, U.geometry(key)))


def _corrupt(case: str, path: str, key: bytes, rng: random.Random, ctx: dict) -> None:
    raw = bytearray(Path(path).read_bytes())
    size = len(raw)
    if case == "header_bitflip":
        _flip_bits(raw, [rng.randrange(4096)], rng)
    elif case == "header_fixed_field_bitflip":
        _flip_bits(raw, [rng.randrange(256)], rng)
    elif case == "segment_table_bitflip":
        nseg = len(U.geometry(key))
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
        k = U.make_key("victim", i, j)
        g = U.geometry(k)
        if len(g) >= 2 and g[0] == g[1] and g[0] > 4096:
            return k
        j += 1


@pytest.mark.parametrize("mac", [False, True], ids=["plain", "mac"])
def test_corruption_is_a_miss(data_dir, mac):
    rng = random.Random(7 + mac)
    mac_key = MAC_KEY if mac else None
    root = data_dir / "root"
    s = _open_store(root, mac_key=mac_key)
    good = [U.make_key("good", i) for i in range(12)]
    assert all(f.result(timeout=60) for f in [U.put(s, k) for k in good])
    # Donor objects for the "valid object, wrong place" cases.
    donor_root = data_dir / "donor"
    ctx: dict[str, str] = {}
    cases = CORRUPTIONS + (MAC_CORRUPTIONS if mac else [])
    victims = {c: _victim_key(i) for i, c in enumerate(cases)}
    other_ns = yrcache.store.keys.Namespace(model="other", dtype=U.DTYPE, num_layers=4, kv_heads=2,
                                      head_size=64, layout="test-dense")
    with _open_store(donor_root, mac_key=mac_key) as donor, \
            Store(donor_root, other_ns, janitor_period=0, mac_key=mac_key) as donor_ns, \
            _open_store(data_dir / "nomac") as nomac, \
            _open_store(data_dir / "wrongmac", mac_key=b"w" * 32) as wrongmac:
        for c, k in victims.items():
            other = U.make_key("donor-other", c)
            assert donor.put(other, U.segments(k), **U.put_kwargs(k)).result()
            assert donor_ns.put(k, U.segments(k), **U.put_kwargs(k)).result()
            assert nomac.put(k, U.segments(k), **U.put_kwargs(k)).result()
            assert wrongmac.put(k, U.segments(k), **U.put_kwargs(k)).result()
    # ^ "other" carries k's segments under another key: a self-consistent object, wrong key.

    def donor_paths(c: str, k: bytes) -> dict[str, str]:
        other = U.make_key("donor-other", c)
        return {
            "other_key_path": os.path.join(donor_root, U.namespace().hex,
                                           L.object_relpath(other.hex())),
            "other_ns_path": os.path.join(donor_root, other_ns.hex, L.object_relpath(k.hex())),
            "nomac_path": os.path.join(data_dir / "nomac", U.namespace().hex,
                                       L.object_relpath(k.hex())),
            "wrongmac_path": os.path.join(data_dir / "wrongmac", U.namespace().hex,
                                          L.object_relpath(k.hex())),
        }

    n_reads = 0
    try:
        for case in cases:
            k = victims[case]
            ctx = donor_paths(case, k)
            for mode in ("verify", "get", "get_lengths"):
                # a fresh good object, then the damage
                assert U.put(s, k, dedup=False).result(), case
                r, ok = U.check_get(s, k)
                assert r.ok and ok, (case, r.reason)
                path = s.path_of(k)
                _corrupt(case, path, k, rng, ctx)
                before = s.stats()
                if mode == "verify":
                    r = s.verify(k)
                    assert not r.ok and r.reason.startswith(OK_MISS), (case, mode, r.reason)
                    assert os.path.exists(path), "verify must not remove"
                else:
                    r, data_ok = U.check_get(s, k, use_lengths=(mode == "get_lengths"))
                    assert not r and r.ok is False, (case, mode)
                    assert data_ok is None
                    assert r.reason.startswith(OK_MISS), (case, mode, r.reason)
                    after = s.stats()
                    is_corrupt = r.reason.startswith("corrupt")
                    assert after["corrupt"] - before["corrupt"] == int(is_corrupt), (case, mode)
                    assert after["misses"] - before["misses"] == 1
                    assert after["hits"] == before["hits"]
                    assert after["errors_by_errno"] == before["errors_by_errno"]
                    if is_corrupt:  # removed: the next writer republishes it
                        assert not os.path.lexists(path), (case, mode)
                    # a second read of the same key is a miss too (missing or corrupt again)
                    r2, _ = U.check_get(s, k, use_lengths=(mode == "get"))
                    assert not r2.ok and r2.reason.startswith(OK_MISS)
                # lookup never crashes (a damaged file may still "exist" for lookup)
                assert s.lookup([k]) in (0, 1)
                assert s.lookup([good[0], k, good[1]]) in (1, 2, 3)
                # readers of other objects keep working
                g = rng.choice(good)
                r, ok = U.check_get(s, g, use_lengths=rng.random() < 0.5)
                assert r.ok and ok, (case, g.hex(), r.reason)
                n_reads += 1
                if os.path.lexists(path):
                    os.unlink(path)
        assert n_reads == 3 * len(cases)
        # everything good is still good, and a full-tree check agrees
        for g in good:
            r, ok = U.check_get(s, g)
            assert r.ok and ok
            assert s.verify(g).ok
        assert s.stats()["corrupt"] > 0
    finally:
        s.close()


def _plant_outside_object(data_dir: Path, k: bytes) -> tuple[Path, str]:
    """A valid object for key k (same namespace) in a root outside the tested one."""
    outside = data_dir / "outside"
    with _open_store(outside) as o:
        assert U.put(o, k).result()
        return outside, o.path_of(k)


def _foreign_entries(data_dir: Path, s: Store) -> dict[str, tuple[bytes, str]]:
    """Plant entries that are not regular files of ours under object names: case -> (key, outside
    path that must stay untouched or '')."""
    out = {}
    # a symlink named like an object, pointing at a valid object outside the root
    k = U.make_key("foreign", "symlink")
    _, target = _plant_outside_object(data_dir, k)
    p = Path(s.path_of(k))
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, p)
    out["symlink_object"] = (k, target)
    # a symlinked shard directory (<ns>/<k[:2]>) leading to a tree with a valid object
    k = U.make_key("foreign", "shard")
    _outside, target = _plant_outside_object(data_dir, k)
    shard = Path(s.path_of(k)).parent.parent
    assert not shard.exists()
    os.symlink(Path(target).parent.parent, shard)
    out["symlinked_shard"] = (k, target)
    # a directory in place of an object
    k = U.make_key("foreign", "dir")
    p = Path(s.path_of(k))
    p.mkdir(parents=True)
    out["directory"] = (k, "")
    # a relative symlink to a good object inside the root (still not followed)
    k = U.make_key("foreign", "inner-symlink")
    good = U.make_key("good", 0)
    p = Path(s.path_of(k))
    p.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(s.path_of(good), p.parent), p)
    out["inner_symlink"] = (k, s.path_of(good))
    # a hard link to an object stored under another key: a regular file, wrong key inside
    k = U.make_key("foreign", "hardlink")
    p = Path(s.path_of(k))
    p.parent.mkdir(parents=True, exist_ok=True)
    os.link(s.path_of(U.make_key("good", 1)), p)
    out["hardlink_other_key"] = (k, s.path_of(U.make_key("good", 1)))
    return out


def test_foreign_entries_are_misses_and_never_followed(data_dir):
    root = data_dir / "root"
    with _open_store(root) as s:
        good = [U.make_key("good", i) for i in range(4)]
        assert all(U.put(s, k).result() for k in good)
        planted = _foreign_entries(data_dir, s)
        targets = {c: (Path(t).read_bytes() if t else b"") for c, (_, t) in planted.items()}
        for case, (k, target) in planted.items():
            for use_lengths in (False, True):
                r, data_ok = U.check_get(s, k, use_lengths=use_lengths)
                assert not r.ok, (case, "data of a foreign entry was returned")
                assert data_ok is None
                assert r.reason.startswith(OK_MISS + ("error:",)), (case, r.reason)
            assert not s.verify(k).ok, case
            assert s.lookup([k]) in (0, 1)
            # what the entry pointed at is untouched (never followed for removal either)
            if target:
                assert Path(target).read_bytes() == targets[case], case
            assert os.path.lexists(target) if target else True
            r, ok = U.check_get(s, good[0])
            assert r.ok and ok
        # the hard link (a regular file with another key inside) was removed as corrupt; the
        # others are not regular files: walk_objects reports none of them as objects
        assert not os.path.lexists(s.path_of(planted["hardlink_other_key"][0]))
        assert {bytes.fromhex(o.key_hex) for o in U.walk(root)} == set(good)
        # a good object can still be published over the planted file-level entries
        for case in ("symlink_object", "inner_symlink", "hardlink_other_key"):
            k = planted[case][0]
            assert U.put(s, k, dedup=False).result(), case
            r, ok = U.check_get(s, k)
            assert r.ok and ok, (case, r.reason)
        for g in good:
            assert s.verify(g).ok


def test_foreign_entry_miss_reason_is_corrupt_or_missing(data_dir):
    with _open_store(data_dir / "root") as s:
        assert all(U.put(s, U.make_key("good", i)).result() for i in range(2))
        planted = _foreign_entries(data_dir, s)
        bad = {}
        for case, (k, _) in planted.items():
            r, _ = U.check_get(s, k)
            if not r.reason.startswith(OK_MISS):
                bad[case] = r.reason
        assert not bad, bad


def test_symlinked_shard_is_never_read_through(data_dir):
    """Lookup is a one-fstatat existence hint (docs/store.md): through a symlinked shard it may
    claim an object, but no byte is ever read through the link, and a put cannot write through
    it either."""
    with _open_store(data_dir / "root", index_ttl=0) as s:
        k = U.make_key("foreign", "shard")
        _, target = _plant_outside_object(data_dir, k)
        before = Path(target).read_bytes()
        shard = Path(s.path_of(k)).parent.parent
        os.symlink(Path(target).parent.parent, shard)
        assert s.lookup([k]) in (0, 1)
        for _ in range(2):
            r, _ = U.check_get(s, k)
            assert not r.ok and r.reason.startswith("corrupt")
        assert not s.put(k, U.segments(k), **U.put_kwargs(k), dedup=False).result()
        assert Path(target).read_bytes() == before


@pytest.mark.slow
def test_fifo_named_like_an_object_does_not_block(data_dir):
    code = f"""
import os, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
import store_util as U
from yrcache.store.store import Store
s = Store({str(data_dir / 'root')!r}, U.namespace(), janitor_period=0)
k = U.make_key("fifo")
assert U.put(s, k).result()
p = s.path_of(k); os.unlink(p); os.mkfifo(p)
r, ok = U.check_get(s, k)
print("GET", r.ok, r.reason, flush=True)
print("VERIFY", s.verify(k).ok, flush=True)
os._exit(0)
"""
    try:
        p = run_child(code, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.fail("get() of a FIFO named like an object did not return within 10 s")
    assert p.returncode == 0, p.stderr
    assert "GET False" in p.stdout and "VERIFY False" in p.stdout


def test_object_with_other_geometry_is_a_miss_not_an_exception(data_dir):
    with _open_store(data_dir / "root") as s:
        k = U.make_key("geometry")
        other = [np.ones(100, np.uint8)] * len(U.geometry(k))  # same segment count, other lengths
        assert s.put(k, other, **U.put_kwargs(k)).result()
        rr = s.get(k, [np.zeros(50, np.uint8)], layers=[0], byte_range=(0, 50)).result()
        assert rr.ok  # 50 bytes of a 100-byte segment: fine
        bufs = [np.zeros(n, np.uint8) for n in U.geometry(k)]
        r = s.get(k, bufs).result(timeout=30)
        assert not r.ok and r.reason.startswith("mismatch")  # not what this caller expects,
        assert os.path.exists(s.path_of(k))                   # but valid: it stays
        r = s.get(k, bufs, lengths=U.geometry(k)).result(timeout=30)
        assert not r.ok and r.reason.startswith("corrupt")   # not the namespace's geometry
        assert not os.path.exists(s.path_of(k))              # so it is removed


# ------------------------------------------------------------------------------------------------
# 3. injected I/O errors
# ------------------------------------------------------------------------------------------------
def _fault_engine(backend: str) -> yrcache.IoEngine:
    # 64 KiB pieces, depth 1: a 4-segment object is several kernel writes in a fixed order.
    return yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=1 << 16, max_inflight_bytes=1 << 16)


def _big_key(tag: str) -> bytes:
    j = 0
    while True:
        k = U.make_key("faults", tag, j)
        if len(U.geometry(k)) == 4 and sum(U.geometry(k)) > 3 * 4096:
            return k
        j += 1


WRITE_FAULTS = [("write:eio@1", "EIO"), ("write:enospc@2", "ENOSPC"), ("write:eio@1+", "EIO"),
                ("write:enospc@3+", "ENOSPC"), ("fsync:eio@1", "EIO"), ("fsync:enospc@1", "ENOSPC"),
                ("any:eio@2", "EIO")]


@pytest.mark.parametrize(("spec", "name"), WRITE_FAULTS)
def test_failing_write_leaves_nothing(backend, data_dir, spec, name):
    root = data_dir / "root"
    eng = _fault_engine(backend)
    try:
        s = _open_store(root, engine=eng)
        try:
            k = _big_key("w")
            old = _big_key("old")
            assert U.put(s, old).result()
            eng._inject_faults(spec)
            assert U.put(s, k).result(timeout=60) is False
            # An overwrite (dedup=False) of an existing object that fails leaves the old one valid.
            eng._inject_faults(spec)
            assert U.put(s, old, dedup=False).result(timeout=60) is False
            eng._inject_faults("")
            assert s.lookup([k]) == 0
            assert not os.path.lexists(s.path_of(k))
            assert U.tmp_files(root) == []
            st_ = s.stats()
            assert st_["store_errors"] == 2
            assert st_["errors_by_errno"] == {name: 2}
            assert st_["objects_stored"] == 1
            r, ok = U.check_get(s, k)
            assert not r.ok and r.reason == "missing"
            r, ok = U.check_get(s, old)
            assert r.ok and ok
            # a fresh store (no in-process index) agrees
            with _open_store(root) as s2:
                assert s2.lookup([k]) == 0 and s2.lookup([old]) == 1
                assert s2.verify(old).ok
            # faults cleared: everything works again
            assert U.put(s, k).result()
            r, ok = U.check_get(s, k)
            assert r.ok and ok
            assert U.read_object_file(s.path_of(k), k)
            assert U.tmp_files(root) == []
        finally:
            s.close()
    finally:
        eng.close()


@pytest.mark.parametrize("spec", ["write:short@1+", "write:short@2,read:short@1+", "any:eintr@2",
                                  "write:eagain@1", "fsync:eintr@1"])
def test_transient_faults_are_invisible_to_put_and_get(backend, data_dir, spec):
    eng = _fault_engine(backend)
    try:
        with _open_store(data_dir / "root", engine=eng) as s:
            eng._inject_faults(spec)
            keys = [_big_key(f"t{i}") for i in range(3)]
            futs = [U.put(s, k) for k in keys]
            results = [f.result(timeout=60) for f in futs]
            assert all(results), results
            for k in keys:
                r, ok = U.check_get(s, k, use_lengths=True)
                assert r.ok and ok, r.reason
                r, ok = U.check_get(s, k)
                assert r.ok and ok, r.reason
            eng._inject_faults("")
            assert s.stats()["store_errors"] == 0 and s.stats()["errors_by_errno"] == {}
            for k in keys:
                assert U.read_object_file(s.path_of(k), k)
            assert U.tmp_files(data_dir / "root") == []
    finally:
        eng.close()


@pytest.mark.parametrize("spec", ["read:eio@1", "read:eio@2", "read:eio@1+", "read:5@3",
                                  "read:enospc@1"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["header_first", "speculative"])
def test_failing_read_is_an_error_miss(backend, data_dir, spec, use_lengths):
    eng = _fault_engine(backend)
    try:
        with _open_store(data_dir / "root", engine=eng) as s:
            k = _big_key("r")
            assert U.put(s, k).result()
            eng._inject_faults(spec)
            r, data_ok = U.check_get(s, k, use_lengths=use_lengths)
            eng._inject_faults("")
            name = "ENOSPC" if "enospc" in spec else "EIO"
            assert not r.ok and data_ok is None
            assert r.reason.startswith("error: "), r.reason
            assert f"[Errno {getattr(errno, name)}]" in r.reason, r.reason
            st_ = s.stats()
            assert st_["errors_by_errno"] == {name: 1}
            assert st_["misses"] == 1 and st_["corrupt"] == 0 and st_["hits"] == 0
            # an I/O error is not corruption: the object is kept, and reads work again
            assert os.path.exists(s.path_of(k))
            r, ok = U.check_get(s, k, use_lengths=use_lengths)
            assert r.ok and ok, r.reason
            assert s.verify(k).ok
            assert s.stats()["hits"] == 1  # verify() is a tool: it counts nothing
    finally:
        eng.close()


# ------------------------------------------------------------------------------------------------
# 4. header parser fuzzing (hypothesis)
# ------------------------------------------------------------------------------------------------
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
        p = F.parse_header(buf)
    except F.ObjectFormatError as e:
        p = e
    # the two agree on accept/reject
    assert (c[0] is None) == isinstance(p, F.ObjectFormatError), (c, p)
    return c, p


def _fix_checksum(b: bytearray, hb: int) -> None:
    b[248:256] = bytes(8)
    b[248:256] = struct.pack("<Q", F.checksum(bytes(b[:hb])))


def _assert_consistent(h) -> None:
    """What any accepted header must satisfy, whatever its bytes."""
    n = h.segment_count
    assert h.version == F.FORMAT_VERSION
    assert h.header_bytes == F.header_bytes_for(n)
    assert 0 < h.token_count
    assert 1 <= len(h.dtype) <= 16 and all(0x21 <= ord(c) <= 0x7E for c in h.dtype)
    assert len(h.shape) <= 8
    assert h.object_bytes % F.ALIGN == 0 and h.object_bytes <= 1 << 40
    lens = [h.segment(i)[1] for i in range(n)]
    hb, offs, total = F.segment_offsets(lens)
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
    hb = F.header_bytes_for(len(spec["segments"]))
    out = bytearray(hb)
    h = F.build_header(out, **spec)
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
        assert c[2] > len(buf) and c[2] % F.ALIGN == 0


@settings(max_examples=300, **_SETTINGS)
@given(st.one_of(st.integers(0, 300), st.integers(4088, 8500)), st.integers(0, 2**64 - 1),
       st.one_of(st.integers(0, 130), st.integers(0, 4096 * 2 - 1)), st.booleans())
def test_parse_arbitrary_bytes_with_valid_magic_never_crashes(size, seed, nseg, deep):
    """Random bytes behind a valid magic, with plausible version, sizes and (when it fits) a valid
    header checksum, so the parser's geometry checks see arbitrary values."""
    b = bytearray(F.MAGIC + random.Random(seed).randbytes(size))
    hb = F.header_bytes_for(min(nseg, 4096))
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
        p = F.parse_header(buf, ns=spec["ns"], key=spec["key"], mac_key=spec["mac_key"])
        assert p.ns == spec["ns"] and p.key == spec["key"] and p.parent == spec["parent"]
        assert p.chunk_index == spec["chunk_index"] and p.token_count == spec["token_count"]
        assert p.dtype == spec["dtype"] and list(p.shape) == spec["shape"]
        assert p.created_unix_ns == spec["created_unix_ns"]
        assert p.segment_count == len(spec["segments"])
        assert bool(p.flags & F.FLAG_MAC) == (spec["mac_key"] is not None)
        assert p.header_bytes == h.header_bytes == len(out)
        assert p.object_bytes == h.object_bytes
        for i, seg in enumerate(spec["segments"]):
            assert p.segment(i) == h.segment(i)
            assert p.segment(i)[1] == len(seg) and p.segment(i)[2] == F.checksum(seg)
        _assert_consistent(p)
        F.verify_segments(p, list(enumerate(spec["segments"])), mac_key=spec["mac_key"])
    d = F.describe(p)
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
    with pytest.raises(F.ObjectFormatError):
        F.parse_header(bytes(out), ns=bytes(16) if spec["ns"] != bytes(16) else b"\1" * 16)
    with pytest.raises(F.ObjectFormatError):
        F.parse_header(bytes(out), key=bytes(16) if spec["key"] != bytes(16) else b"\1" * 16)
    with pytest.raises(F.ObjectFormatError):
        F.parse_header(bytes(out), mac_key=b"z" * 16 if spec["mac_key"] != b"z" * 16 else b"y" * 16)


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
        if not isinstance(p, F.ObjectFormatError):
            _assert_consistent(p)
    elif c[2]:
        assert c[2] > hb


def test_parse_header_rejects_non_buffers_cleanly():
    for bad in (None, 3, "YRCKVOBJ" * 600, [1, 2, 3]):
        with pytest.raises((TypeError, F.ObjectFormatError)):
            F.parse_header(bad)


# ------------------------------------------------------------------------------------------------
# 5. ENOSPC on a small real file system
# ------------------------------------------------------------------------------------------------
def test_enospc_on_small_tmpfs(small_tmpfs):
    root = small_tmpfs / "root"
    s = _open_store(root)
    # The usage ledger is flushed at most once a second; a flush on a completely full file system
    # raises out of put() (see test_put_result_is_bool_when_the_ledger_flush_hits_enospc). Keep
    # this test about the data path and deterministic: no ledger flushes after the first.
    s.usage.refresh_s = float("inf")
    try:
        stored: list[bytes] = []
        failed: list[bytes] = []
        i = 0
        # fill until stores fail, then keep trying (smaller objects may still fit now and then)
        while len(failed) < 12 and i < 400:
            batch = [U.make_key("enospc", j) for j in range(i, i + 4)]  # 4 puts in flight
            i += 4
            futs = [U.put(s, k) for k in batch]
            for k, fut in zip(batch, futs):
                ok = fut.result(timeout=60)
                assert isinstance(ok, bool)
                (stored if ok else failed).append(k)
            assert U.tmp_files(root) == [], "a failed store left its temp file"
            for k, fut in zip(batch, futs):
                if not fut.result():
                    assert not os.path.lexists(s.path_of(k))
                    assert s.lookup([k]) == 0
        assert failed, "the 1 MiB file system never filled up"
        assert len(stored) >= 3
        st_ = s.stats()
        assert st_["errors_by_errno"].get("ENOSPC", 0) >= 1
        assert st_["store_errors"] == len(failed)
        assert st_["objects_stored"] == len(stored)
        # while full: everything stored earlier reads back exactly; nothing partial exists
        objs = U.walk(root)
        assert {bytes.fromhex(o.key_hex) for o in objs} == set(stored)
        for o in objs:
            assert o.size == U.object_bytes(bytes.fromhex(o.key_hex))
        for k in stored:
            r, ok = U.check_get(s, k)
            assert r.ok and ok, (k.hex(), r.reason)
            assert s.verify(k).ok
        # still full: one more store larger than any that failed fails cleanly
        big = U.make_key("enospc-big")
        bigseg = U.payload(big, 0, 300_000)
        assert s.put(big, [bigseg], **U.put_kwargs(big)).result() is False
        assert U.tmp_files(root) == [] and not os.path.lexists(s.path_of(big))
        # free space: stores work again
        again = [U.make_key("enospc-again", j) for j in range(4)]
        need = sum(U.object_bytes(k) for k in again + failed[:1]) + (64 << 10)
        freed, gone = 0, []
        for k in stored:
            if freed >= need:
                break
            freed += U.object_bytes(k)
            assert s.delete(k)
            gone.append(k)
        assert freed >= need
        assert all(U.put(s, k).result() for k in again)
        for k in again + [k for k in stored if k not in gone]:
            r, ok = U.check_get(s, k)
            assert r.ok and ok
        # and a previously failed key now stores fine
        assert U.put(s, failed[0]).result()
        r, ok = U.check_get(s, failed[0])
        assert r.ok and ok
        assert U.tmp_files(root) == []
    finally:
        s.close()


def test_put_result_is_bool_when_the_ledger_flush_hits_enospc(small_tmpfs):
    root = small_tmpfs / "root"
    with _open_store(root) as s:
        k0 = U.make_key("ledger", 0)
        s.usage._flushed_at = -1e9  # a ledger flush is due (as it is a second after the last)
        assert U.put(s, k0).result()  # the first publish writes usage.json
        free = os.statvfs(small_tmpfs).f_bavail * os.statvfs(small_tmpfs).f_frsize
        with open(small_tmpfs / "filler", "wb") as f:  # leave room for exactly one 8 KiB object
            f.write(bytes(free - 8192))
        s.usage._flushed_at = -1e9  # the next flush is due, and will hit ENOSPC
        k = U.make_key("ledger", 1)
        fut = s.put(k, [np.ones(100, np.uint8)], **U.put_kwargs(k))
        ok = fut.result(timeout=60)  # raises OSError(ENOSPC) today
        assert ok is True and s.verify(k).ok
        assert sorted(os.listdir(root / L.META_DIR)) == ["usage.json", "usage.lock"]


# ------------------------------------------------------------------------------------------------
# 6. MooseFS: readers on one node while a writer on the other publishes; racing writers
# ------------------------------------------------------------------------------------------------
def _spawn_writer(root: Path, out: Path, **cfg) -> subprocess.Popen:
    code = U.writer_code(root=str(root), **cfg)
    with open(out, "w") as fo, open(out.with_suffix(".err"), "w") as fe:
        return subprocess.Popen([sys.executable, "-c", code], stdout=fo, stderr=fe,
                                stdin=subprocess.PIPE, env=_child_env(), cwd="/")


def _finish(proc: subprocess.Popen, out: Path, timeout: float = 120) -> tuple[str, dict]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    text = out.read_text()
    err = out.with_suffix(".err").read_text()
    assert proc.returncode == 0, (proc.returncode, err[-3000:])
    done = [ln for ln in text.splitlines() if ln.startswith("done ")]
    assert done, text[-2000:]
    return text, json.loads(done[0][5:])


@pytest.mark.slow
def test_moosefs_reader_sees_only_misses_or_whole_objects(shared_dirs, tmp_path):
    dir_a, dir_b = shared_dirs
    n = 300
    keys = [U.make_key("mfs-rw", i) for i in range(n)]
    out = tmp_path / "writer.out"
    proc = _spawn_writer(dir_a / "root", out, tag="mfs-rw", start=0, stop=n, depth=4, threads=4)
    try:
        _wait_line(out, "ready", proc)
        reader = _open_store(dir_b / "root", index_ttl=0)
        hits = misses = 0
        rng = random.Random(5)
        try:
            while proc.poll() is None:
                # lookups and gets of random keys, both read paths
                for k in rng.sample(keys, 20):
                    r, ok = U.check_get(reader, k, use_lengths=rng.random() < 0.5)
                    if r.ok:
                        assert ok, f"{k.hex()}: hit with wrong bytes"
                        hits += 1
                    else:
                        assert r.reason == "missing", (k.hex(), r.reason)
                        misses += 1
                    assert reader.lookup([k]) in (0, 1)
            text, wstats = _finish(proc, out)
            assert wstats["objects_stored"] == n and wstats["store_errors"] == 0
            assert len(_ok_keys(text)) == n
            # after the writer is done every object becomes visible on B, whole
            deadline = time.monotonic() + 30
            pending = set(keys)
            while pending and time.monotonic() < deadline:
                for k in list(pending):
                    r, ok = U.check_get(reader, k)
                    if r.ok:
                        assert ok
                        pending.discard(k)
                    else:
                        assert r.reason == "missing", r.reason
                if pending:
                    time.sleep(0.2)
            assert not pending, f"{len(pending)} objects never became visible on mount B"
            st_ = reader.stats()
            assert st_["corrupt"] == 0 and st_["errors_by_errno"] == {}
        finally:
            reader.close()
        print(f"reader on B during the write: {hits} hits, {misses} misses")
        # The reader ran while objects were being published: it saw both (the writer takes over a
        # second for 300 fsynced objects on MooseFS; the reader checks 20 keys per round).
        assert hits > 0 and misses > 0, (hits, misses)
        assert U.tmp_files(dir_b / "root") == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_moosefs_racing_writers_on_both_mounts(shared_dirs, tmp_path):
    dir_a, dir_b = shared_dirs
    n = 120
    keys = [U.make_key("mfs-race", i) for i in range(n)]
    procs = []
    outs = [tmp_path / "wa.out", tmp_path / "wb.out"]
    try:
        for d, out, seed in ((dir_a, outs[0], 1), (dir_b, outs[1], 2)):
            procs.append(_spawn_writer(d / "root", out, tag="mfs-race", start=0, stop=n, depth=4,
                                       threads=4, dedup=False, wait_go=True, seed=seed))
        for p, out in zip(procs, outs):
            _wait_line(out, "ready", p)
        for p in procs:  # start both at once
            p.stdin.write(b"go\n")
            p.stdin.flush()
            p.stdin.close()
        results = [_finish(p, out) for p, out in zip(procs, outs)]
        for text, wstats in results:
            assert "fail " not in text
            assert len(_ok_keys(text)) == n, "every put of both writers must succeed"
            assert wstats["store_errors"] == 0 and wstats["objects_stored"] == n
        for view in (dir_a / "root", dir_b / "root"):
            objs = U.walk(view)
            assert {bytes.fromhex(o.key_hex) for o in objs} == set(keys)
            with _open_store(view) as s:
                for k in keys:
                    r, ok = U.check_get(s, k, use_lengths=True)
                    assert r.ok and ok, (k.hex(), r.reason)
                    assert s.verify(k).ok
                assert s.stats()["corrupt"] == 0
            assert U.tmp_files(view) == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
