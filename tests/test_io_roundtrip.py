# SPDX-License-Identifier: Apache-2.0
"""Round-trips of random data through both backends: sizes, offsets, alignments, O_DIRECT and its
buffered fallbacks, EOF, vectored and batched requests."""
from __future__ import annotations

import os

import numpy as np
import pytest

import yrcache

from .helpers import require

SIZES = [1, 511, 4095, 4096, 4097, 65536 + 3, 1 << 20, (4 << 20) + 4096 * 3 + 17]
OFFSETS = [0, 1, 4096, 4096 * 7 + 100, (1 << 20) + 513]


def rand(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8)


def read_back(path: os.PathLike[str] | str, offset: int, n: int) -> bytes:
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        return f.read(n)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("offset", OFFSETS)
def test_roundtrip_sizes_offsets(engine, data_dir, size, offset):
    path = data_dir / "f.bin"
    data = rand(size, size * 31 + offset)
    with engine.open(path, "w") as f:
        assert f.direct, f.direct_reason
        assert engine.pwrite(f, data, offset).result(timeout=60) == size
        engine.fsync(f).result(timeout=60)
        out = np.full(size, 0xAB, np.uint8)
        assert engine.pread(f, out, offset).result(timeout=60) == size
    np.testing.assert_array_equal(out, data)
    assert read_back(path, offset, size) == data.tobytes()  # what a plain reader sees
    assert os.path.getsize(path) == offset + size


@pytest.mark.parametrize("misalign", [0, 1, 8, 512, 4095])
def test_unaligned_user_buffers_bounce(engine, data_dir, misalign):
    """Caller memory off the 4 KiB grid is staged through bounce buffers, never EINVAL."""
    n = (1 << 20) + 12345
    raw = np.zeros(n + 8192, np.uint8)
    base = (-raw.ctypes.data) % 4096 + misalign
    buf = raw[base:base + n]
    buf[:] = rand(n, misalign)
    path = data_dir / "u.bin"
    with engine.open(path, "w") as f:
        assert engine.pwrite(f, buf, 8192).result() == n
        out_raw = np.zeros(n + 8192, np.uint8)
        out = out_raw[base:base + n]
        assert engine.pread(f, out, 8192).result() == n
    np.testing.assert_array_equal(out, buf)
    if misalign % 4096:
        assert engine.stats()["bounced"] > 0


def test_large_64mib_registered(engine, data_dir):
    n = 64 << 20
    buf = engine.alloc(n)
    np.frombuffer(buf, np.uint8)[:] = rand(n, 7)
    with engine.open(data_dir / "big.bin", "w") as f:
        engine.fallocate(f, 0, n).result()
        assert engine.pwrite(f, buf, 0).result() == n
        out = engine.alloc(n)
        assert engine.pread(f, out, 0).result() == n
    assert bytes(memoryview(out)[: 1 << 20]) == bytes(memoryview(buf)[: 1 << 20])
    np.testing.assert_array_equal(np.frombuffer(out, np.uint8), np.frombuffer(buf, np.uint8))
    if engine.backend == "uring" and os.geteuid() == 0:
        assert engine.stats()["fixed_buffer_ios"] > 0  # root: no memlock limit on registration


def test_read_past_eof_returns_what_exists(engine, data_dir):
    path = data_dir / "short.bin"
    data = rand(69_732, 1)
    path.write_bytes(data.tobytes())
    with engine.open(path, "r") as f:
        out = np.zeros(1 << 20, np.uint8)
        assert engine.pread(f, out, 0).result() == len(data)
        np.testing.assert_array_equal(out[: len(data)], data)
        assert engine.pread(f, out, 1 << 21).result() == 0  # wholly past EOF
        assert engine.pread(f, out[:100], len(data) - 10).result() == 10


def test_vectored_and_batch(engine, data_dir):
    parts = [rand(n, n) for n in (4096, 100, 1 << 18, 7)]
    with engine.open(data_dir / "v.bin", "w") as f, engine.open(data_dir / "w.bin", "w") as g:
        total = sum(p.size for p in parts)
        assert engine.pwritev(f, parts, 4096).result() == total
        outs = [np.zeros_like(p) for p in parts]
        assert engine.preadv(f, outs, 4096).result() == total
        for a, b in zip(parts, outs):
            np.testing.assert_array_equal(a, b)
        # one Future across two files
        assert engine.write_batch([(f, parts[0], 0), (g, parts[2], 8192)]).result() == \
            parts[0].size + parts[2].size
        o1, o2 = np.zeros_like(parts[0]), np.zeros_like(parts[2])
        engine.read_batch([(f, o1, 0), (g, o2, 8192)]).result()
        np.testing.assert_array_equal(o1, parts[0])
        np.testing.assert_array_equal(o2, parts[2])


def test_zero_length_and_bytes_input(engine, data_dir):
    with engine.open(data_dir / "z.bin", "w") as f:
        assert engine.pwrite(f, b"", 0).result() == 0
        assert engine.pwrite(f, b"hello", 0).result() == 5  # read-only buffers may be written
        out = bytearray(5)
        assert engine.pread(f, out, 0).result() == 5
        assert out == b"hello"


def test_ramfs_refuses_odirect_falls_back(backend, ramfs_dir, caplog):
    """ramfs refuses O_DIRECT at open (EINVAL): the file is served buffered and this is logged."""
    with yrcache.IoEngine(backend) as eng:
        with caplog.at_level("WARNING", logger="yrcache"):
            f = eng.open(ramfs_dir / "r.bin", "w")
        assert not f.direct
        assert "EINVAL" in f.direct_reason
        assert any("O_DIRECT unavailable" in r.message for r in caplog.records)
        data = rand((1 << 20) + 3, 5)
        assert eng.pwrite(f, data, 1).result() == data.size
        out = np.zeros_like(data)
        assert eng.pread(f, out, 1).result() == data.size
        np.testing.assert_array_equal(out, data)
        f.close()
        assert yrcache.build_info(ramfs_dir)["odirect"]["usable"] is False


def test_tmpfs_accepts_odirect(backend, small_tmpfs):
    with yrcache.IoEngine(backend) as eng, eng.open(small_tmpfs / "t.bin", "w") as f:
        require(f.direct, f"tmpfs refused O_DIRECT on this kernel: {f.direct_reason}")
        data = rand(65536, 3)
        assert eng.pwrite(f, data, 0).result() == data.size


def test_einval_at_first_io_falls_back(backend, data_dir, caplog):
    """A file system that accepts O_DIRECT at open but returns EINVAL at the first I/O
    (injected)."""
    with yrcache.IoEngine(backend, chunk_bytes=1 << 16) as eng:
        f = eng.open(data_dir / "e.bin", "w")
        assert f.direct
        eng._inject_faults("write:einval@1")
        data = rand(1 << 20, 9)
        with caplog.at_level("WARNING", logger="yrcache"):
            assert eng.pwrite(f, data, 0).result() == data.size
            eng.close()  # flushes notices to the log
        assert not f.direct and "EINVAL" in f.direct_reason
        assert any("O_DIRECT refused at first I/O" in r.message for r in caplog.records)
    np.testing.assert_array_equal(np.fromfile(data_dir / "e.bin", np.uint8), data)


def test_open_errors_carry_errno(engine, data_dir):
    with pytest.raises(FileNotFoundError) as ei:
        engine.open(data_dir / "missing" / "x.bin", "r")
    assert ei.value.errno == 2 and ei.value.filename.endswith("x.bin")
    (data_dir / "exists").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        engine.open(data_dir / "exists", "x")
    with pytest.raises(ValueError, match="mode"):
        engine.open(data_dir / "exists", "rw")
    with pytest.raises(IsADirectoryError):
        engine.open(data_dir, "w")


def test_buffer_pool_slabs_are_registered_and_recycled(engine, data_dir):
    pool = yrcache.BufferPool(300_000, 3, engine)
    assert pool.slab_bytes % 4096 == 0
    slabs = [pool.acquire() for _ in range(3)]
    assert pool.acquire() is None and pool.available == 0  # bounded: no growth
    with engine.open(data_dir / "p.bin", "w") as f:
        for i, s in enumerate(slabs):
            s[:] = rand(len(s), i).tobytes()
            assert engine.pwrite(f, s, i * len(s)).result() == len(s)
        expect = b"".join(bytes(s) for s in slabs)
        for s in slabs:
            pool.release(s)
        assert pool.available == 3
        again = pool.acquire()
        assert engine.pread(f, again, 0).result() == pool.slab_bytes
        assert bytes(again) == expect[: pool.slab_bytes]
    if engine.backend == "uring" and os.geteuid() == 0:
        assert pool.registered and engine.stats()["fixed_buffer_ios"] > 0
    with pytest.raises(ValueError):
        pool.release(memoryview(bytearray(4)))
