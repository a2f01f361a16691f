# SPDX-License-Identifier: Apache-2.0
"""File <-> GPU memory transfers, with the ladder cuFile -> bounce via pinned host + io_uring ->
bounce via pinned host + psync, decided once per process and logged with its reason.

libcufile is loaded with dlopen (never linked), from ``YRCACHE_CUFILE_LIB`` if set, else from the
``nvidia-cufile`` Python package's lib directory, else the loader's search path. cuFile is tried
only when a CUDA device is usable (without one, cuFileDriverOpen can block). On a virtual machine
cuFile runs in compat mode (its own POSIX bounce), which still counts as the cuFile rung.

This moves raw byte ranges. The Cache does not use it for objects: objects are verified (XXH3 per
segment) on the host before any byte reaches the engine, so object reads and writes bounce through
pinned host staging by design; on-GPU verification would be needed to read objects by GDS.

>>> io = DeviceFileIO(device=0)          # io.backend: "cufile" | "bounce-uring" | "bounce-psync"
>>> io.write("/mnt/kv/x", t.data_ptr(), t.nbytes)
>>> io.read("/mnt/kv/x", u.data_ptr(), u.nbytes)
"""
from __future__ import annotations

import errno
import glob
import importlib.util
import logging
import os
import tempfile
import threading
from typing import Any

from .. import envs
from .._native import _C
from ..io.engine import HostBuffer, IoEngine
from . import copy as cuda

logger = logging.getLogger(__name__)

BACKENDS = ("cufile", "bounce-uring", "bounce-psync")
_decided: dict[str, tuple[str, str]] = {}
_lock = threading.Lock()


def cufile_candidates() -> list[str]:
    """Where libcufile may be: YRCACHE_CUFILE_LIB, the nvidia-cufile wheel, the search path."""
    out: list[str] = []
    env = envs.get("YRCACHE_CUFILE_LIB")
    if env:
        out.append(env)
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations or []) if spec else []:
        # nvidia-cufile (CUDA 13: nvidia/cu13/lib) and nvidia-cufile-cu12 (nvidia/cufile/lib)
        out += sorted(glob.glob(os.path.join(root, "*", "lib", "libcufile.so.0")))
    out.append("libcufile.so.0")
    return out


def open_cufile() -> dict[str, Any]:
    """Load and open cuFile once per process; {"ok", "library", "reason", "version"}."""
    # libcufile logs to ./cufile.log unless told otherwise: never litter the caller's directory.
    os.environ.setdefault("CUFILE_LOGFILE_PATH",
                          os.path.join(tempfile.gettempdir(), f"yrcache-cufile-{os.getuid()}.log"))
    st = _C.gds.status()
    if st["library"] or st["reason"]:
        return dict(st)
    ok, why = cuda.status()
    if not ok:   # decided before the driver is touched
        return {"ok": False, "library": "", "version": 0, "reason": why}
    return dict(_C.gds.open(cufile_candidates()))


def decide(prefer: str = "auto") -> tuple[str, str]:
    """(backend, reason) of the ladder; decided once per ``prefer`` and logged."""
    if prefer not in ("auto", *BACKENDS):
        raise ValueError(f"prefer must be 'auto' or one of {BACKENDS}, got {prefer!r}")
    with _lock:
        if prefer in _decided:
            return _decided[prefer]
        reasons = []
        choice = ""
        if prefer in ("auto", "cufile"):
            st = open_cufile()
            if st["ok"]:
                choice = "cufile"
                reasons.append(f"cuFile {st['version']} from {st['library']}")
            else:
                reasons.append(f"cuFile unusable: {st['reason']}")
        if not choice and prefer in ("auto", "cufile", "bounce-uring"):
            ok, why = _uring_ok()
            if ok:
                choice = "bounce-uring"
            else:
                reasons.append(f"io_uring unusable: {why}")
        if not choice:
            choice = "bounce-psync"
        if prefer not in ("auto", choice):
            reasons.append(f"asked for {prefer}")
        out = (choice, "; ".join(reasons))
        _decided[prefer] = out
        logger.info("yrcache: device file I/O uses %s (%s)", choice, out[1] or "first choice")
        return out


def _uring_ok() -> tuple[bool, str]:
    from .. import build_info
    info = build_info()
    if "uring" not in info["backends"]:
        return False, "not compiled"
    return bool(info["io_uring"]["usable"]), str(info["io_uring"]["reason"])


class DeviceFileIO:
    """Whole-range transfers between files and device memory on ``device``.

    ``read``/``write`` block the calling thread (the GIL is released) and return bytes moved.
    They are not ordered with any CUDA stream: synchronize the work that writes (or reads) the
    device range first. One device per process is assumed for cuFile (it uses the calling
    thread's current device). Bounce backends use one pinned, io_uring-registered HostBuffer of
    ``bounce_bytes`` and move the range in pieces of that size.
    """

    def __init__(self, device: int = 0, *, prefer: str = "auto",
                 bounce_bytes: int = 16 << 20) -> None:
        cuda.require(device)
        self.device = device
        self.backend, self.reason = decide(prefer)
        self._mu = threading.Lock()
        self._engine: IoEngine | None = None
        self._bounce: Any = None
        if self.backend != "cufile":
            self._engine = IoEngine("uring" if self.backend == "bounce-uring" else "psync")
            self._bounce = HostBuffer(bounce_bytes)
            self._engine.register(self._bounce)
            cuda.pin(self._bounce, device)

    def write(self, path: str | os.PathLike[str], address: int, nbytes: int,
              offset: int = 0) -> int:
        """Device bytes [address, +nbytes) -> the file at ``offset`` (created if missing)."""
        if self.backend == "cufile":
            fd = _open_direct(path, os.O_WRONLY | os.O_CREAT)
            try:
                return int(_C.gds.File(fd).write(address, nbytes, offset))
            finally:
                os.close(fd)
        assert self._engine is not None
        with self._mu, self._engine.open(path, "r+" if os.path.exists(path) else "w") as f:
            view = memoryview(self._bounce)
            done = 0
            while done < nbytes:
                n = min(len(view), nbytes - done)
                _C.cuda.memcpy(self._bounce.address, address + done, n, 1, 0)
                self._engine.pwrite(f, view[:n], offset + done).result()
                done += n
            return done

    def read(self, path: str | os.PathLike[str], address: int, nbytes: int,
             offset: int = 0) -> int:
        """The file's bytes at ``offset`` -> device [address, +nbytes); fewer at EOF."""
        if self.backend == "cufile":
            fd = _open_direct(path, os.O_RDONLY)
            try:
                return int(_C.gds.File(fd).read(address, nbytes, offset))
            finally:
                os.close(fd)
        assert self._engine is not None
        with self._mu, self._engine.open(path, "r") as f:
            view = memoryview(self._bounce)
            done = 0
            while done < nbytes:
                n = min(len(view), nbytes - done)
                got = int(self._engine.pread(f, view[:n], offset + done).result())
                if got:
                    _C.cuda.memcpy(address + done, self._bounce.address, got, 0, 0)
                done += got
                if got < n:
                    break
            return done

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> DeviceFileIO:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_direct(path: str | os.PathLike[str], flags: int) -> int:
    """O_DIRECT where the file system takes it (cuFile's fast path); buffered where it refuses
    (EINVAL: tmpfs before 6.6, overlayfs), which cuFile handles in compat mode."""
    try:
        return os.open(path, flags | getattr(os, "O_DIRECT", 0), 0o644)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return os.open(path, flags, 0o644)


__all__ = ["BACKENDS", "DeviceFileIO", "cufile_candidates", "decide", "open_cufile"]
