# SPDX-License-Identifier: Apache-2.0
"""Faults injected inside the C++ backends (where a CQE or pread/pwrite result is produced) reach
Future.result() as the right exception with errno; the engine stays usable afterwards."""
from __future__ import annotations

import errno

import numpy as np
import pytest

import yrcache


def make(backend: str) -> yrcache.IoEngine:
    # 64 KiB pieces so a 1 MiB request is 16 kernel I/Os; depth 1 keeps their order deterministic.
    return yrcache.IoEngine(backend, queue_depth=1, chunk_bytes=1 << 16,
                            max_inflight_bytes=1 << 16)


@pytest.mark.parametrize(("spec", "exc", "err"), [
    ("write:eio@3", OSError, errno.EIO),
    ("write:enospc@1", OSError, errno.ENOSPC),
    ("write:eperm@2", PermissionError, errno.EPERM),
    ("any:eio@5", OSError, errno.EIO),
])
def test_write_errors_reach_result(backend, data_dir, spec, exc, err):
    data = np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8)
    with make(backend) as eng, eng.open(data_dir / "f.bin", "w") as f:
        eng._inject_faults(spec)
        fut = eng.pwrite(f, data, 0)
        with pytest.raises(exc) as ei:
            fut.result(timeout=30)
        assert ei.value.errno == err
        assert ei.value.filename == str(data_dir / "f.bin")
        assert isinstance(fut.exception(), exc)
        assert eng.stats()["errors"] == 1
        # the engine stays usable
        eng._inject_faults("")
        assert eng.pwrite(f, data, 0).result(timeout=30) == data.size
        out = np.zeros_like(data)
        assert eng.pread(f, out, 0).result(timeout=30) == data.size
        np.testing.assert_array_equal(out, data)


def test_read_error_and_fsync_error(backend, data_dir):
    data = np.arange(1 << 20, dtype=np.uint8)
    with make(backend) as eng, eng.open(data_dir / "f.bin", "w") as f:
        eng.pwrite(f, data, 0).result()
        eng._inject_faults("read:eio@2,fsync:eio@1")
        with pytest.raises(OSError) as ei:
            eng.pread(f, np.zeros_like(data), 0).result()
        assert ei.value.errno == errno.EIO
        with pytest.raises(OSError) as ei:
            eng.fsync(f).result()
        assert ei.value.errno == errno.EIO
        eng.fsync(f).result()  # only the first fsync was faulted


@pytest.mark.parametrize("spec", ["write:short@1+", "write:short@2,read:short@1+",
                                  "any:eagain@1", "any:eintr@2", "write:eagain@1+"])
def test_short_transfers_and_retries_are_invisible(backend, data_dir, spec):
    """Short completions are resubmitted; EAGAIN/EINTR retried. The data must still be exact."""
    data = np.random.default_rng(2).integers(0, 256, (1 << 20) + 777, dtype=np.uint8)
    with make(backend) as eng, eng.open(data_dir / "s.bin", "w") as f:
        eng._inject_faults(spec)
        fut = eng.pwrite(f, data, 4096)
        if spec == "write:eagain@1+":  # a permanent EAGAIN eventually surfaces, bounded retries
            with pytest.raises(BlockingIOError):
                fut.result(timeout=60)
            return
        assert fut.result(timeout=60) == data.size
        out = np.zeros_like(data)
        assert eng.pread(f, out, 4096).result(timeout=60) == data.size
        np.testing.assert_array_equal(out, data)
        st = eng.stats()
        if "short" in spec:
            assert st["short_transfers"] > 0
        else:
            assert st["retries"] > 0


def test_bad_fault_spec(engine):
    for bad in ("write", "write:eio", "nope:eio@1", "write:bogus@1", "write:eio@0"):
        with pytest.raises(ValueError):
            engine._inject_faults(bad)
