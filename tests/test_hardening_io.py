# SPDX-License-Identifier: Apache-2.0
"""Adversarial arguments to the I/O layer (IoEngine, File, HostBuffer, BufferPool, Futures and the
native bindings under them): every case gives a typed error saying what was wrong, an OSError with
the errno the OS gave, or the documented behaviour; never a crash, a truncated path, a setuid file
or a descriptor that outlives close()."""
from __future__ import annotations

import errno
import gc
import os
import stat
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

import yrcache
from yrcache import _C
from yrcache.futures import Future

from .helpers import run_child

MAX_IO = _C.io.MAX_IO_BYTES
NAN, INF = float("nan"), float("inf")
BAD_TYPES = [1.5, NAN, INF, None, True, "0", b"0", [0]]  # TypeError wherever an int is due


def fds_to(path: Path | str) -> list[str]:
    """This process's descriptors open on ``path`` (a deleted file reads as 'path (deleted)')."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(path)):
            out.append(target)
    return out


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- 1. thread counts: bounded, and a thread that cannot start is an exception, not SIGABRT ------
THREAD_CTORS = {
    "IoEngine": lambda n: yrcache.IoEngine("psync", threads=n),
    "Engine": lambda n: _C.io.Engine("psync", 8, 1 << 20, 1 << 24, n, False, 2),
    "StatBatch": lambda n: _C.store.StatBatch(n),
    "gather_paged": lambda n: _C.copy.gather_paged(
        np.zeros(4, np.uint8).ctypes.data, 1, 4, 4, np.zeros(1, np.int64), bytearray(4), n),
}


@pytest.mark.parametrize("ctor", sorted(THREAD_CTORS))
@pytest.mark.parametrize("n", [1025, 20_000, 100_000, 2**31, 2**63, 2**64, -1])
def test_thread_count_is_bounded(ctor, n):
    with pytest.raises(ValueError, match=r"threads must be in \[0, 1024\]"):
        THREAD_CTORS[ctor](n)


@pytest.mark.parametrize("ctor", sorted(THREAD_CTORS))
@pytest.mark.parametrize("bad", BAD_TYPES)
def test_thread_count_type(ctor, bad):
    with pytest.raises(TypeError, match="threads must be an int"):
        THREAD_CTORS[ctor](bad)


def test_store_lookup_threads_bounded(tmp_path):
    from .store_util import namespace
    with pytest.raises(ValueError, match="lookup_threads.*1024"):
        yrcache.Store(tmp_path / "root", namespace(), lookup_threads=100_000)


_NPROC_CHILD = r"""
import errno, os, resource
import numpy as np
import yrcache
from yrcache import _C

def tasks_of(uid):
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                if next(l for l in f if l.startswith("Uid:")).split()[1] == str(uid):
                    n += len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, StopIteration):
            pass
    return n

def tasks():
    return len(os.listdir("/proc/self/task"))

mine = tasks()
if os.geteuid() == 0:  # root ignores RLIMIT_NPROC: run as nobody
    others = tasks_of(65534)
    room = mine + others + 3
    resource.setrlimit(resource.RLIMIT_NPROC, (room, room))
    os.setgid(65534)
    os.setuid(65534)
else:
    others = tasks_of(os.getuid()) - mine
    room = mine + others + 3
    resource.setrlimit(resource.RLIMIT_NPROC, (room, room))

def expect_eagain(what, fn):
    try:
        fn()
    except OSError as e:
        assert e.errno == errno.EAGAIN, (what, e)
        assert "cannot start thread" in str(e), (what, e)
        print(what, "raised", type(e).__name__, flush=True)
        return
    raise AssertionError(f"{what}: no error")

# Room for 3 threads: some start, then one fails; those that started are stopped and joined.
expect_eagain("psync", lambda: yrcache.IoEngine("psync", threads=64))
expect_eagain("native psync", lambda: _C.io.Engine("psync", 8, 1 << 20, 1 << 24, 64, False, 2))
expect_eagain("StatBatch", lambda: _C.store.StatBatch(64))
# No room at all: the single io_uring reaper cannot start either (the ladder must not claim
# io_uring is unavailable and then fail in psync: it raises the thread error).
resource.setrlimit(resource.RLIMIT_NPROC, (0, room))
expect_eagain("auto", lambda: yrcache.IoEngine("auto", callbacks="manual"))
expect_eagain("StatBatch(1)", lambda: _C.store.StatBatch(1))
src = np.arange(64, dtype=np.uint8)
dst = bytearray(64)
_C.copy.gather_paged(src.ctypes.data, 8, 8, 8, np.arange(8)[::-1].copy(), dst, 8)
assert bytes(dst) == src.reshape(8, 8)[::-1].tobytes()  # the calling thread copied every part
# Room for the psync worker but not for the Python dispatcher thread: the engine is closed (its
# worker joined) before the error propagates, not left running until garbage collection.
resource.setrlimit(resource.RLIMIT_NPROC, (mine + others + 1, room))
try:
    yrcache.IoEngine("psync", threads=1)
    raise AssertionError("dispatcher: no error")
except RuntimeError as e:
    assert "thread" in str(e), e
    print("dispatcher raised", type(e).__name__, flush=True)
assert tasks() == mine, (tasks(), mine)
# The threads that had started were joined: the same room serves a working engine again.
resource.setrlimit(resource.RLIMIT_NPROC, (room, room))
with yrcache.IoEngine("psync", threads=2, callbacks="manual") as eng:
    buf = eng.alloc(4096)
    with eng.open(os.devnull, "r+", direct=False) as f:
        assert eng.pwrite(f, buf, 0).result(10) == 4096
print("OK", flush=True)
"""


def test_failed_thread_start_raises_instead_of_abort():
    r = run_child(_NPROC_CHILD, env={"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"})
    assert "terminate called" not in r.stderr
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert r.stdout.splitlines()[-1] == "OK"
    assert r.stdout.count("raised") == 6


_NO_BOUNCE_MEMORY_CHILD = r"""
import os, resource, sys
import yrcache
backend, path = sys.argv[1], sys.argv[2]
eng = yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=1 << 30, max_inflight_bytes=1 << 30)
f = eng.open(path, "w")
assert f.direct
arena = yrcache.HostBuffer(2 << 20)
view = memoryview(arena)[8:8 + (1 << 20)]  # misaligned memory: direct pieces need a bounce buffer
view[:] = bytes(range(256)) * 4096
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = vm * 1024 + (256 << 20)  # no room for a 1 GiB bounce buffer
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    yrcache.HostBuffer(1 << 30)
    raise AssertionError("RLIMIT_AS leaves room for a bounce buffer: the test proves nothing")
except OSError:
    pass
assert eng.pwrite(f, view, 0).result(60) == 1 << 20
assert eng.stats()["bounced"] == 0
eng.close()
f.close()
with open(path, "rb") as g:
    assert g.read() == bytes(view)
print("OK", flush=True)
"""


def test_bounce_buffer_without_memory_goes_buffered(backend, data_dir):
    """A bounce buffer that cannot be mapped (on a worker or the reaper thread) must not abort
    the process: the piece goes through the buffered descriptor instead."""
    r = run_child(_NO_BOUNCE_MEMORY_CHILD.replace("sys.argv[1], sys.argv[2]",
                                                  f"{backend!r}, {str(data_dir / 'b.bin')!r}"),
                  env={"OPENBLAS_NUM_THREADS": "1"})
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-3000:])
    assert r.stdout.strip() == "OK"


# ---- 2. an embedded NUL never truncates a path ---------------------------------------------------
def _nul_entry_points(victim: Path):
    d = str(victim.parent)
    name = victim.name
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    wr = os.O_RDWR | os.O_CREAT | os.O_TRUNC
    return dfd, {
        "IoEngine.open": lambda eng: eng.open(f"{victim}\0.tmp", "w"),
        "IoEngine.open dir_fd": lambda eng: eng.open(f"{name}\0.tmp", "w", dir_fd=dfd),
        "File.open": lambda eng: _C.io.File.open(f"{victim}\0x", wr, 0o644, False),
        "File.open_at": lambda eng: _C.io.File.open_at(dfd, f"{name}\0x", wr, 0o644, False),
        "open_beneath": lambda eng: _C.io.open_beneath(dfd, f"{name}\0x", wr, 0o644),
        "probe_odirect": lambda eng: _C.io.probe_odirect(f"{d}\0/elsewhere"),
        "StatBatch.run": lambda eng: _C.store.StatBatch(1).run(dfd, [name, f"{name}\0x"]),
        "gds.open": lambda eng: _C.gds.open([f"{victim}\0.so"]),
    }


@pytest.mark.parametrize("entry", ["IoEngine.open", "IoEngine.open dir_fd", "File.open",
                                   "File.open_at", "open_beneath", "probe_odirect",
                                   "StatBatch.run", "gds.open"])
def test_embedded_nul_is_refused(engine, data_dir, entry):
    victim = data_dir / "important"
    victim.write_bytes(b"precious")
    dfd, entries = _nul_entry_points(victim)
    try:
        with pytest.raises(ValueError, match="embedded null byte"):
            entries[entry](engine)
    finally:
        os.close(dfd)
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in data_dir.iterdir()) == ["important"]


# ---- 3. a finished (failed) operation keeps no descriptor, file or buffer ------------------------
@pytest.mark.parametrize("callbacks", ["thread", "manual"])
def test_failed_op_releases_descriptors_at_close(backend, data_dir, callbacks):
    """The exception and its traceback are kept, gc is off: closing the File still closes its
    descriptors (and a deleted temp file's blocks are freed)."""
    gc.disable()
    try:
        with yrcache.IoEngine(backend, callbacks=callbacks) as eng:
            (data_dir / "ro.bin").write_bytes(b"x" * 4096)
            f = eng.open(data_dir / "ro.bin", "r")
            buf = np.zeros(4096, np.uint8)
            buf_ref = weakref.ref(buf)
            with pytest.raises(OSError) as ei:
                eng.pwrite(f, buf, 0).result(10)  # EBADF: the file is open read-only
            assert ei.value.errno == errno.EBADF
            del buf
            assert buf_ref() is None  # neither the Future nor the traceback holds the buffer
            assert len(fds_to(data_dir / "ro.bin")) == 2  # O_DIRECT + buffered
            f.close()
            assert fds_to(data_dir / "ro.bin") == []
            with pytest.raises(ValueError, match="closed file"):
                f.fileno()

            tmp = data_dir / "tmp.bin"
            g = eng.open(tmp, "w")
            eng._inject_faults("write:enospc@1+")
            with pytest.raises(OSError) as ei2:
                eng.pwrite(g, np.ones(1 << 16, np.uint8), 0).result(10)
            assert ei2.value.errno == errno.ENOSPC
            eng._inject_faults("")
            tmp.unlink()
            g.close()
            assert fds_to(tmp) == []  # no "tmp.bin (deleted)" pinning the blocks
            assert ei.value is not None and ei2.value.__traceback__ is not None
    finally:
        gc.enable()


def test_many_failed_ops_keep_fd_count_bounded(backend, data_dir):
    gc.disable()
    try:
        with yrcache.IoEngine(backend) as eng:
            (data_dir / "ro.bin").write_bytes(b"x" * 8192)
            base = nfds()
            kept = []
            for _ in range(100):
                f = eng.open(data_dir / "ro.bin", "r")
                try:
                    eng.pwrite(f, bytearray(8192), 0).result(10)
                except OSError as e:
                    kept.append(e)  # the exception, its traceback and the Future stay alive
                finally:
                    f.close()
            assert len(kept) == 100
            assert nfds() <= base
    finally:
        gc.enable()


def test_close_while_in_flight_closes_when_done(engine, data_dir):
    f = engine.open(data_dir / "inflight.bin", "w")
    fut = engine.pwrite(f, np.ones(4 << 20, np.uint8), 0)
    f.close()  # the request in flight still completes on the open descriptors
    assert fut.result(30) == 4 << 20
    assert fds_to(data_dir / "inflight.bin") == []
    assert (data_dir / "inflight.bin").stat().st_size == 4 << 20


# ---- 4. permission bits --------------------------------------------------------------------------
@pytest.mark.parametrize(("perm", "exc"), [
    (-1, ValueError), (0o1000, ValueError), (0o4755, ValueError), (0o2777, ValueError),
    (2**31, ValueError), (2**63, ValueError), (1.5, TypeError), (True, TypeError),
    ("644", TypeError), (None, TypeError)])
def test_perm_is_range_checked(engine, data_dir, perm, exc):
    with pytest.raises(exc, match="perm"):
        engine.open(data_dir / "p.bin", "w", perm=perm)
    assert not (data_dir / "p.bin").exists()


@pytest.mark.parametrize("mode", [-1, 0o4755, 2**40])
def test_native_mode_is_range_checked(data_dir, mode):
    dfd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for fn in (lambda: _C.io.File.open(str(data_dir / "n.bin"), os.O_RDWR | os.O_CREAT, mode,
                                           False),
                   lambda: _C.io.open_beneath(dfd, "n.bin", os.O_RDWR | os.O_CREAT, mode)):
            with pytest.raises(ValueError, match=r"mode must be in \[0, 511\]"):
                fn()
    finally:
        os.close(dfd)
    assert not (data_dir / "n.bin").exists()


def test_valid_perm_has_no_special_bits(engine, data_dir):
    old = os.umask(0)
    try:
        with engine.open(data_dir / "ok.bin", "w", perm=0o777):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE((data_dir / "ok.bin").stat().st_mode) == 0o777


@pytest.mark.parametrize("dir_fd", [-1000, -1, -(2**31)])
def test_bad_dir_fd_never_drops_confinement(engine, data_dir, dir_fd):
    (data_dir / "abs.bin").write_bytes(b"keep")
    with pytest.raises(ValueError, match="dir_fd"):
        engine.open(str(data_dir / "abs.bin"), "w", dir_fd=dir_fd)
    assert (data_dir / "abs.bin").read_bytes() == b"keep"


# ---- 5. integer arguments of every IoEngine method -----------------------------------------------
RANGE_BAD = [-1, MAX_IO + 1, 2**63, 2**64, -(2**63)]


def _calls(eng, f, x):
    b = bytearray(4096)
    return {
        "pwrite": lambda: eng.pwrite(f, b, x),
        "pread": lambda: eng.pread(f, b, x),
        "pwritev": lambda: eng.pwritev(f, [b, b], x),
        "preadv": lambda: eng.preadv(f, [b], x),
        "write_batch": lambda: eng.write_batch([(f, b, x)]),
        "read_batch": lambda: eng.read_batch([(f, b, 0), (f, b, x)]),
        "fallocate offset": lambda: eng.fallocate(f, x, 4096),
        "fallocate length": lambda: eng.fallocate(f, 0, x),
        "fallocate mode": lambda: eng.fallocate(f, 0, 4096, x),
        "native rw": lambda: eng._c.rw(1, True, [(f._c, b, x)]),
        "native fallocate": lambda: eng._c.fallocate(1, f._c, 0, x, 4096),
    }


CALLS = sorted(_calls(None, None, 0))


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("x", RANGE_BAD)
def test_out_of_range_integers_are_value_errors(engine, data_dir, call, x):
    with engine.open(data_dir / "i.bin", "w") as f:
        with pytest.raises(ValueError, match=r"(offset|length|mode) must be in \[") as ei:
            _calls(engine, f, x)[call]()
        assert str(x) in str(ei.value)
        assert engine._c.inflight() == 0 and not engine._book.inflight


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("x", BAD_TYPES)
def test_non_integers_are_type_errors(engine, data_dir, call, x):
    with engine.open(data_dir / "t.bin", "w") as f:
        with pytest.raises(TypeError, match="must be an int"):
            _calls(engine, f, x)[call]()


def test_largest_offset_reaches_the_os(engine, data_dir):
    """At the bound the request is valid and the kernel answers (EFBIG/EINVAL), as OSError."""
    with engine.open(data_dir / "big.bin", "w") as f:
        with pytest.raises(OSError) as ei:
            engine.pwrite(f, bytearray(4096), MAX_IO).result(10)
        assert ei.value.errno in (errno.EFBIG, errno.EINVAL)


@pytest.mark.parametrize(("arg", "v", "exc"), [
    ("queue_depth", -1, ValueError), ("queue_depth", 4097, ValueError),
    ("queue_depth", 2**63, ValueError), ("queue_depth", 1.5, TypeError),
    ("queue_depth", "8", TypeError), ("queue_depth", True, TypeError),
    ("chunk_bytes", 100, ValueError), ("chunk_bytes", 2**31, ValueError),
    ("chunk_bytes", NAN, TypeError), ("max_inflight_bytes", 2**63, ValueError),
    ("max_inflight_bytes", -5, ValueError), ("max_inflight_bytes", INF, TypeError),
    ("threads", 2**31, ValueError), ("threads", -1, ValueError), ("threads", 2.0, TypeError),
])
def test_engine_settings_are_checked(arg, v, exc):
    with pytest.raises(exc, match=arg):
        yrcache.IoEngine("psync", **{arg: v})


@pytest.mark.parametrize(("args", "exc", "match"), [
    (("psync", 0, 1 << 20, 1 << 24, 0, False, 2), ValueError,
     r"queue_depth must be in \[1, 4096\]"),
    (("psync", 8, 1 << 40, 1 << 40, 0, False, 2), ValueError, "chunk_bytes"),
    (("psync", 8, 1 << 20, 1 << 19, 0, False, 2), ValueError, "at least chunk_bytes"),
    (("psync", 2**64, 1 << 20, 1 << 24, 0, False, 2), ValueError, "queue_depth"),
    (("psync", None, 1 << 20, 1 << 24, 0, False, 2), TypeError, "queue_depth must be an int"),
    (("psync\0x", 8, 1 << 20, 1 << 24, 0, False, 2), ValueError, "backend"),
    (("psync", 8, 1 << 20, 1 << 24, 0, False, -1), ValueError,
     r"reads_per_file must be in \[0, 4096\]"),
    (("psync", 8, 1 << 20, 1 << 24, 0, False, "2"), TypeError,
     "reads_per_file must be an int"),
])
def test_native_engine_settings(args, exc, match):
    with pytest.raises(exc, match=match):
        _C.io.Engine(*args)


def test_non_file_arguments(engine, data_dir):
    with pytest.raises(TypeError, match="yrcache.File"):
        engine.fsync("nope")
    with pytest.raises(TypeError, match="yrcache.File"):
        engine.fallocate(None, 0, 1)
    with pytest.raises(TypeError, match="extent"):
        engine.read_batch([None])
    with pytest.raises(ValueError, match="extent"):
        engine.read_batch([(1, 2)])
    with pytest.raises(ValueError, match="at least one extent"):
        engine.write_batch([])
    with pytest.raises(TypeError, match="extent"):
        engine._c.rw(1, True, [[1, 2, 3]])
    with pytest.raises(TypeError, match="File"):
        engine._c.rw(1, True, [(1, bytearray(1), 0)])
    for mode in ("rw", "", None, 1, ["r"]):
        with pytest.raises(ValueError, match="mode"):
            engine.open(data_dir / "m.bin", mode)
    with pytest.raises(TypeError, match="path"):
        engine.open(b"/tmp/bytes")
    with pytest.raises(TypeError):
        engine.open(None)
    with pytest.raises(TypeError, match="direct"):
        engine.open(data_dir / "m.bin", "w", direct="yes")
    with pytest.raises(TypeError, match="backend"):
        yrcache.IoEngine(5)


# ---- timeouts of the Future API ------------------------------------------------------------------
def _pending() -> Future:
    return Future()  # a Python-driven future nobody completes


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize(("timeout", "exc"), [(NAN, ValueError), ("1", TypeError),
                                              (True, TypeError), ([1], TypeError)])
def test_bad_timeouts(engine, data_dir, native, timeout, exc):
    if native:
        f = engine.open(data_dir / "to.bin", "w")
        fut = engine.pwrite(f, bytearray(4096), 0)
    else:
        fut = _pending()
    for call in (lambda: fut.result(timeout), lambda: fut.exception(timeout),
                 lambda: yrcache.wait([fut], timeout=timeout),
                 lambda: yrcache.wait([fut], timeout=timeout, return_when=yrcache.FIRST_COMPLETED),
                 lambda: yrcache.gather(fut, timeout=timeout)):
        with pytest.raises(exc, match="timeout"):
            call()
    if native:
        assert fut.result(30) == 4096
        f.close()


@pytest.mark.parametrize("timeout", [-1, -INF, 0, 1e-9, -1e300])
def test_negative_or_zero_timeout_polls(timeout):
    fut = _pending()
    with pytest.raises(TimeoutError):
        fut.result(timeout)
    done, not_done = yrcache.wait([fut], timeout=timeout)
    assert not done and not_done == {fut}
    with pytest.raises(TimeoutError):
        yrcache.gather(fut, timeout=timeout)
    fut.set_result(7)
    assert fut.result(timeout) == 7 and yrcache.gather(fut, timeout=timeout) == [7]


@pytest.mark.parametrize("timeout", [INF, 1e300, 2**70, None])
def test_unbounded_timeout_waits_for_the_result(engine, data_dir, timeout):
    with engine.open(data_dir / "inf.bin", "w") as f:
        fut = engine.pwrite(f, bytearray(8192), 0)
        assert fut.result(timeout) == 8192
        assert yrcache.gather(fut, timeout=timeout) == [8192]
        assert yrcache.wait([fut], timeout=timeout).done == {fut}
    py = _pending()
    py.set_result(1)
    assert py.result(timeout) == 1


def test_native_completion_timeouts():
    with yrcache.IoEngine("psync", callbacks="manual") as eng:
        cq = eng._c.completions
        with pytest.raises(ValueError, match="nan"):
            cq.pop(NAN)
        cq.wake()
        assert cq.pop(INF) == []  # +inf is "no limit", woken at once: no overflow to "now"
        cq.wake()
        assert cq.pop(1e300) == []


def test_callback_must_be_callable():
    fut = _pending()
    with pytest.raises(TypeError, match="callable"):
        fut.add_done_callback(5)
    fut.set_result(1)
    with pytest.raises(TypeError, match="callable"):
        fut.add_done_callback(None)


@pytest.mark.parametrize(("args", "exc", "match"), [
    ((0, 2**64 - 1, 2**64 - 1, 1, 4096, True), ValueError, "offset"),
    ((0, 0, MAX_IO + 1, 1, 4096, True), ValueError, "length"),
    ((0, 0, 1 << 40, 1, 4096, False), ValueError, "pieces"),
    ((0, 0, 4096, 4096, 0, True), ValueError, "align"),
    ((0, 0, 4096, 4096, 3000, True), ValueError, "power of two"),
    ((0, -1, 4096, 4096, 4096, True), ValueError, "offset"),
    ((0, 0.5, 4096, 4096, 4096, True), TypeError, "offset"),
])
def test_splitter_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        _C.io.split_request(*args)


def test_wait_and_gather_refuse_non_futures():
    for call in (lambda: yrcache.wait([1]), lambda: yrcache.gather(None),
                 lambda: yrcache.wait([_pending(), "x"], return_when=yrcache.FIRST_COMPLETED)):
        with pytest.raises(TypeError, match="Future"):
            call()
    with pytest.raises(ValueError, match="return_when"):
        yrcache.wait([_pending()], timeout=0, return_when="SOMETIMES")


# ---- closed objects ------------------------------------------------------------------------------
def _ops(eng, f):
    b = bytearray(4096)
    return {
        "pread": lambda: eng.pread(f, b), "pwrite": lambda: eng.pwrite(f, b),
        "preadv": lambda: eng.preadv(f, [b]), "pwritev": lambda: eng.pwritev(f, [b]),
        "read_batch": lambda: eng.read_batch([(f, b, 0)]),
        "write_batch": lambda: eng.write_batch([(f, b, 0)]),
        "fsync": lambda: eng.fsync(f), "fallocate": lambda: eng.fallocate(f, 0, 4096),
    }


OPS = sorted(_ops(None, None))


@pytest.mark.parametrize("op", OPS)
def test_closed_file(engine, data_dir, op):
    f = engine.open(data_dir / "c.bin", "w")
    f.close()
    f.close()  # idempotent
    assert f.closed and "closed" in repr(f)
    with pytest.raises(ValueError, match="closed file"):
        _ops(engine, f)[op]()
    assert engine._c.inflight() == 0 and not engine._book.inflight


@pytest.mark.parametrize("op", OPS + ["open", "alloc", "register"])
def test_closed_engine(backend, data_dir, op):
    eng = yrcache.IoEngine(backend)
    f = eng.open(data_dir / "e.bin", "w")
    buf = yrcache.HostBuffer(4096)
    eng.close()
    eng.close()  # idempotent
    calls = dict(_ops(eng, f), open=lambda: eng.open(data_dir / "e2.bin", "w"),
                 alloc=lambda: eng.alloc(4096), register=lambda: eng.register(buf))
    with pytest.raises(yrcache.ClosedError):
        calls[op]()
    assert not (data_dir / "e2.bin").exists()
    assert eng.stats()["ops"] == 0 and eng.run_callbacks() == 0
    f.close()


# ---- paths that are missing, directories, read-only --------------------------------------------
@pytest.mark.parametrize(("rel", "mode", "exc", "err"), [
    ("missing/x.bin", "r", FileNotFoundError, errno.ENOENT),
    ("missing.bin", "r+", FileNotFoundError, errno.ENOENT),
    ("", "r", FileNotFoundError, errno.ENOENT),
    (".", "w", IsADirectoryError, errno.EISDIR),
    ("file.bin/x", "w", NotADirectoryError, errno.ENOTDIR),
    ("x" * 300, "w", OSError, errno.ENAMETOOLONG),
    ("/".join(["d"] * 3000), "w", OSError, errno.ENAMETOOLONG),
])
def test_bad_paths_raise_oserror_with_errno(engine, data_dir, rel, mode, exc, err):
    (data_dir / "file.bin").write_bytes(b"x")
    path = str(data_dir / rel) if rel else ""
    with pytest.raises(exc) as ei:
        engine.open(path, mode)
    assert ei.value.errno == err


def test_directory_opened_for_reading_fails_at_io(engine, data_dir):
    with engine.open(data_dir, "r") as d:
        with pytest.raises(IsADirectoryError):
            engine.pread(d, bytearray(4096), 0).result(10)


def test_read_only_mount(engine, data_dir, ro_bind):
    (data_dir / "r.bin").write_bytes(b"y" * 4096)
    ro = ro_bind(data_dir)
    for name, mode in (("new.bin", "w"), ("new.bin", "x"), ("r.bin", "w"), ("r.bin", "r+")):
        with pytest.raises(OSError) as ei:
            engine.open(ro / name, mode)
        assert ei.value.errno == errno.EROFS
    with engine.open(ro / "r.bin", "r") as f:
        buf = bytearray(4096)
        assert engine.pread(f, buf, 0).result(10) == 4096 and bytes(buf) == b"y" * 4096
        with pytest.raises(OSError) as ei:
            engine.pwrite(f, buf, 0).result(10)
        assert ei.value.errno == errno.EBADF


# ---- HostBuffer, alloc, register, BufferPool -----------------------------------------------------
@pytest.mark.parametrize(("n", "exc"), [
    (-1, ValueError), (2**64, ValueError), (2**63, ValueError), (1.5, TypeError),
    (None, TypeError), ("4096", TypeError), (True, TypeError), (NAN, TypeError)])
def test_host_buffer_sizes(engine, n, exc):
    for make in (yrcache.HostBuffer, engine.alloc):
        with pytest.raises(exc, match="nbytes"):
            make(n)


def test_host_buffer_too_large_for_memory_is_oserror():
    with pytest.raises(OSError) as ei:
        yrcache.HostBuffer(2**62)
    assert ei.value.errno == errno.ENOMEM


def test_empty_host_buffer_and_register(engine, data_dir):
    b = engine.alloc(0)
    assert len(b) == 0 and memoryview(b).nbytes == 0
    for bad in (bytearray(4096), memoryview(b), None, 3):
        with pytest.raises(TypeError, match="HostBuffer"):
            engine.register(bad)
    with engine.open(data_dir / "z.bin", "w") as f:
        assert engine.pwrite(f, b, 0).result(10) == 0  # zero-length request completes at once


@pytest.mark.parametrize(("slab", "count", "exc"), [
    (0, 1, ValueError), (4096, 0, ValueError), (4096, -1, ValueError), (-4096, 2, ValueError),
    (2**70, 1, ValueError), (1.5, 2, TypeError), (4096, None, TypeError), (True, 2, TypeError)])
def test_buffer_pool_arguments(engine, slab, count, exc):
    with pytest.raises(exc):
        yrcache.BufferPool(slab, count, engine)


def test_buffer_pool_release_foreign_and_twice(engine):
    pool = yrcache.BufferPool(4096, 2, engine)
    v = pool.acquire()
    pool.release(v)
    with pytest.raises(ValueError):
        pool.release(v)  # twice
    with pytest.raises(ValueError):
        pool.release(memoryview(bytearray(4096)))
    assert pool.available == 2


# ---- soak: descriptors and bookkeeping stay bounded over 2,000 operations (half fail) ------------
SOAK_ROUNDS = 340  # 6 operations each


def test_soak_fds_and_inflight_bounded(backend, data_dir):
    (data_dir / "ro.bin").write_bytes(b"r" * 8192)
    buf = np.arange(8192, dtype=np.uint8)
    out = np.zeros(8192, np.uint8)
    with yrcache.IoEngine(backend, queue_depth=4, chunk_bytes=4096,
                          max_inflight_bytes=16384) as eng:
        base = nfds()
        peak_book = ops = failed = 0
        for i in range(SOAK_ROUNDS):
            f = eng.open(data_dir / f"s{i % 7}.bin", "w")
            ro = eng.open(data_dir / "ro.bin", "r")
            futs = [eng.pwrite(f, buf, 0), eng.pwrite(ro, buf, 0),          # EBADF
                    eng.fsync(f), eng.pwrite(ro, buf[1:], 1),                 # EBADF, bounced
                    eng.fallocate(ro, 0, 4096)]                               # EBADF
            peak_book = max(peak_book, len(eng._book.inflight))
            res = yrcache.gather(*futs, timeout=30, return_exceptions=True)
            got = eng.pread(f, out, 0)
            assert got.result(30) == 8192
            ops += len(futs) + 1
            failed += sum(isinstance(r, OSError) for r in res)
            assert res[0] == 8192 and res[2] is None
            assert all(isinstance(r, OSError) and r.errno == errno.EBADF for r in res[1::2]) \
                and isinstance(res[4], OSError)
            f.close()
            ro.close()
            assert nfds() <= base
        assert ops == 6 * SOAK_ROUNDS and failed == 3 * SOAK_ROUNDS
        np.testing.assert_array_equal(out, buf)
        # the dispatcher thread retires completed futures asynchronously: a few rounds may lag
        # behind on a loaded machine, but the book never grows with the number of operations
        assert peak_book <= 6 * 8
        deadline = time.monotonic() + 10
        while eng._book.inflight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not eng._book.inflight
        assert eng._c.inflight() == 0
        assert not eng._book.orphans
        assert eng.stats()["errors"] == failed
    assert nfds() <= base


def test_work_queued_at_exit_still_reaches_the_engine(data_dir):
    """A process that queues puts on a Store and exits without waiting: the store's workers are
    joined at exit before the I/O engine under them closes, so every put is published."""
    code = f"""
import hashlib, yrcache
from yrcache.store.keys import Namespace
ns = Namespace(model="m", dtype="float16", num_layers=2, kv_heads=1, head_size=64,
               layout="dense", chunk_tokens=16)
s = yrcache.Store({str(data_dir / "root")!r}, ns, store_threads=1, janitor_period=0)
seg = bytearray(1 << 16)
keys = [hashlib.blake2b(b"%d" % i, digest_size=16).digest() for i in range(50)]
for i, k in enumerate(keys):
    s.put(k, [seg, seg], parent=b"\\0" * 16, chunk_index=i, token_count=16, dtype="float16",
          shape=[1 << 16])
"""
    r = run_child(code)
    assert r.returncode == 0, r.stderr
    objects = [p for p in (data_dir / "root").rglob("*.kv")]
    assert len(objects) == 50, r.stderr


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds ``address`` (/proc/self/smaps; the
    kernel merges neighbouring mappings whose flags agree)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(" ", 1)[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif head == "VmFlags:" and inside:
                return line.split()[1:]
    raise AssertionError(f"no mapping at {address:#x}")


def test_host_buffer_asks_for_huge_pages_only_when_told() -> None:
    """Arenas (2 MiB or more) ask for transparent huge pages; ``huge_pages=False`` buffers (the
    host tier's slots, first touched while a load runs) do not, so no first touch can make the
    kernel compact memory on a latency path."""
    arena = _C.mem.HostBuffer(4 << 20)
    slot = _C.mem.HostBuffer(4 << 20, huge_pages=False)
    small = _C.mem.HostBuffer(1 << 20)
    assert "hg" in _vm_flags(arena.address)           # VM_HUGEPAGE: MADV_HUGEPAGE was applied
    assert "hg" not in _vm_flags(slot.address)
    assert "hg" not in _vm_flags(small.address)       # under 2 MiB no huge page could fit
    np.frombuffer(slot, np.uint8)[:] = 7               # usable like any buffer
    assert len(slot) == 4 << 20 and bytes(slot)[-1] == 7
    with pytest.raises(TypeError):
        _C.mem.HostBuffer(4096, True)                 # keyword only
    with pytest.raises(TypeError, match="huge_pages"):
        _C.mem.HostBuffer(4096, huge_pages=1)         # a bool, not anything truthy
