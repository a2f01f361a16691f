# SPDX-License-Identifier: Apache-2.0
"""The file I/O engine: io_uring + O_DIRECT with a psync fallback, returning Futures.

>>> eng = yrcache.IoEngine()                      # backend ladder: auto -> uring -> psync
>>> f = eng.open("/data/x.bin", "w")              # O_DIRECT where the file system allows it
>>> buf = eng.alloc(64 << 20)                     # page-aligned, registered with the ring
>>> eng.pwrite(f, buf, 0).result()                # bytes written
>>> eng.fsync(f).result()
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from .. import envs
from .._args import check_int
from .._native import _C
from .._util import LATE, LogOnce, close_at_exit, forget_at_exit
from ..futures import Future

logger = logging.getLogger(__name__)

HostBuffer = _C.mem.HostBuffer

# The native bounds: both layers refuse the same values, in the same words.
MAX_THREADS: int = _C.io.MAX_THREADS
_MAX_QUEUE_DEPTH: int = _C.io.MAX_QUEUE_DEPTH
_MAX_CHUNK_BYTES: int = _C.io.MAX_CHUNK_BYTES
_MAX_IO_BYTES: int = _C.io.MAX_IO_BYTES
_MIN_CHUNK_BYTES = 4096


def _file_arg(file: Any) -> File:
    if not isinstance(file, File):
        raise TypeError(f"file must be a yrcache.File, got {type(file).__name__}")
    return file


_MODES = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "x": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}


class File:
    """A file opened by an :class:`IoEngine` (an O_DIRECT descriptor plus a buffered one).

    ``direct`` says whether O_DIRECT is in use; ``direct_reason`` says why not. Closing refuses new
    requests and closes the descriptors at once, or as soon as the requests in flight complete:
    whatever still references the File (a Future, a traceback) does not keep them open.
    """

    __slots__ = ("__weakref__", "_c")

    def __init__(self, native: Any) -> None:
        self._c = native

    @property
    def path(self) -> str:
        return self._c.path

    @property
    def direct(self) -> bool:
        return self._c.direct

    @property
    def direct_reason(self) -> str:
        return self._c.direct_reason

    @property
    def closed(self) -> bool:
        return self._c.closed

    def fileno(self) -> int:
        """The buffered descriptor (valid until close; ValueError afterwards, as Python files)."""
        fd = self._c.fileno()
        if fd < 0:
            raise ValueError(f"I/O operation on closed file {self.path}")
        return fd

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        closed = " closed" if self.closed else ""
        return f"<yrcache.File {self.path!r} direct={self.direct}{closed}>"


class IoEngine:
    """Asynchronous file I/O with one backend chosen once: ``uring`` (liburing, a reaper thread
    completes requests) or ``psync`` (a pread/pwrite thread pool).

    Args:
        backend: ``"auto"`` (io_uring if a ring can be created here, else psync, logging why),
            ``"uring"`` or ``"psync"`` (raise :class:`BackendUnavailableError` if unusable).
            Default from ``YRCACHE_BACKEND``.
        queue_depth: kernel I/Os in flight (psync: worker threads). Default 8.
        chunk_bytes: large requests are cut into pieces of this many bytes (rounded up to 4 KiB).
        max_inflight_bytes: cap on bytes in flight (uring); at least one piece always runs, and
            a read beside writes that fill the cap.
        reads_per_file: reads of one file in flight before a queued read of another file goes
            first (FUSE clients of distributed file systems serve reads spread over files
            faster); 0: plain FIFO. Default from ``YRCACHE_READS_PER_FILE`` (2).
        register_buffers: use io_uring fixed buffers for memory from :meth:`alloc` (falls back to
            unregistered I/O when RLIMIT_MEMLOCK is too small).
        direct: open files with O_DIRECT by default.
        callbacks: ``"thread"`` (a dispatcher thread runs Future callbacks) or ``"manual"`` (you
            watch :attr:`eventfd` and call :meth:`run_callbacks`, e.g. from an event loop).

    Thread-safe: any thread may submit. Every method that submits returns at once.
    """

    def __init__(self, backend: str | None = None, *, queue_depth: int | None = None,
                 chunk_bytes: int | None = None, max_inflight_bytes: int | None = None,
                 threads: int = 0, register_buffers: bool = True, direct: bool = True,
                 callbacks: str = "thread", reads_per_file: int | None = None) -> None:
        cfg = envs.io_defaults()
        backend = backend or cfg["backend"]
        queue_depth = check_int("queue_depth", queue_depth or cfg["queue_depth"], 1,
                                _MAX_QUEUE_DEPTH)
        chunk_bytes = check_int("chunk_bytes", chunk_bytes or cfg["chunk_bytes"],
                                _MIN_CHUNK_BYTES, _MAX_CHUNK_BYTES)
        max_inflight_bytes = check_int(
            "max_inflight_bytes", max_inflight_bytes or max(cfg["max_inflight_bytes"], chunk_bytes),
            _MIN_CHUNK_BYTES, _MAX_IO_BYTES)
        threads = check_int("threads", threads, 0, MAX_THREADS)
        reads_per_file = check_int(
            "reads_per_file", cfg["reads_per_file"] if reads_per_file is None else reads_per_file,
            0, _MAX_QUEUE_DEPTH)
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        if callbacks not in ("thread", "manual"):
            raise ValueError(f"callbacks must be 'thread' or 'manual', got {callbacks!r}")
        self._c = _C.io.Engine(backend, queue_depth, chunk_bytes, max_inflight_bytes, threads,
                               register_buffers, reads_per_file)
        faults = envs.get("YRCACHE_TEST_FAULTS")
        if faults:   # a slow or failing file system inside a process a test cannot reach
            self._c.set_faults(faults)
            logger.warning("yrcache I/O engine: injecting faults %r (YRCACHE_TEST_FAULTS)",
                           faults)
        self._direct = bool(direct)
        self._cq = self._c.completions
        self._ids = itertools.count(1)
        self._book = _Book()
        self._closed = False
        self._close_lock = threading.Lock()
        self._warn_once = LogOnce(logger)
        reason = self._c.fallback_reason
        if reason:
            logger.warning("yrcache I/O engine: %s", reason)
        else:
            logger.info("yrcache I/O engine: backend %s", self.backend)
        self._log_notices()
        self._dispatcher: threading.Thread | None = None
        if callbacks == "thread":
            self._stop = threading.Event()
            self._dispatcher = threading.Thread(
                target=_dispatch, args=(self._c, self._cq, self._book, self._stop),
                name=f"yrcache-io-{self.backend}", daemon=True)
            try:
                self._dispatcher.start()
            except BaseException:  # out of threads: stop the backend's, not leave them to __del__
                self._dispatcher = None
                self.close()
                raise
        close_at_exit(self, tier=LATE)   # after the pools that queue work on it

    # -- properties --------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend in use: ``"uring"`` or ``"psync"``."""
        return self._c.backend

    @property
    def fallback_reason(self) -> str:
        """Why the ladder did not use io_uring (empty when it did or psync was asked for)."""
        return self._c.fallback_reason

    @property
    def queue_depth(self) -> int:
        return self._c.queue_depth

    @property
    def chunk_bytes(self) -> int:
        return self._c.chunk_bytes

    @property
    def max_inflight_bytes(self) -> int:
        return self._c.max_inflight_bytes

    @property
    def eventfd(self) -> int:
        """An eventfd that becomes readable when operations complete (for event loops)."""
        return self._cq.eventfd

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, int]:
        """Counters: ops, tasks, bytes read/written, short transfers, retries, fallbacks, errors,
        and ``reads_ahead``: reads issued before writes queued earlier (loads never wait behind
        stores; writes hold at most about 3/4 of the queue depth and of ``max_inflight_bytes``)."""
        return self._c.stats()

    # -- files and memory --------------------------------------------------------------------
    def open(self, path: str | os.PathLike[str], mode: str = "r", *, direct: bool | None = None,
             perm: int = 0o644, dir_fd: int | None = None) -> File:
        """Open ``path`` (modes r, r+, w, w+, x). Raises the OSError subclass for errno.

        O_DIRECT is used where the file system accepts it; where it refuses (EINVAL at open or at
        the first I/O, e.g. ramfs) the file falls back to buffered I/O and this is logged once per
        file system. With ``dir_fd``, ``path`` is resolved beneath that directory without following
        any symlink (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS): for shared cache roots.
        """
        self._check_open()
        if not isinstance(mode, str) or mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"path must be str or os.PathLike[str], got {type(path).__name__}")
        perm = check_int("perm", perm, 0, 0o777)  # a negative mode would be setuid|setgid|sticky
        if dir_fd is not None:
            dir_fd = check_int("dir_fd", dir_fd, -(2**31), 2**31 - 1)
        want = self._direct if direct is None else direct
        if not isinstance(want, bool):
            raise TypeError(f"direct must be a bool or None, got {type(want).__name__}")
        if dir_fd is None:
            f = File(_C.io.File.open(path, _MODES[mode], perm, want))
        else:
            f = File(_C.io.File.open_at(dir_fd, path, _MODES[mode], perm, want))
        if want and not f.direct:
            self._warn_once("odirect", str(os.fstat(f.fileno()).st_dev),
                            "O_DIRECT unavailable for %s: %s; using buffered I/O on this file "
                            "system", path, f.direct_reason)
        return f

    def alloc(self, nbytes: int) -> Any:
        """A page-aligned :class:`HostBuffer` of ``nbytes``, registered with the ring if
        possible."""
        self._check_open()
        buf = HostBuffer(nbytes)
        self.register(buf)
        return buf

    def register(self, buf: Any) -> bool:
        """Register a HostBuffer for fixed-buffer I/O; False (logged once) when not possible."""
        self._check_open()
        if not isinstance(buf, HostBuffer):
            raise TypeError(f"only a HostBuffer (from alloc()) can be registered, got "
                            f"{type(buf).__name__}")
        r = self._c.register_buffer(buf)
        if r < 0 and r != -95:  # EOPNOTSUPP: backend without fixed buffers
            self._warn_once("register", str(-r), "io_uring buffer registration failed (%s); "
                            "using unregistered I/O (raise RLIMIT_MEMLOCK to enable)",
                            os.strerror(-r))
        return r == 0

    # -- I/O ---------------------------------------------------------------------------------
    def pread(self, file: File, buf: Any, offset: int = 0) -> Future[int]:
        """Read ``len(buf)`` bytes at ``offset`` into ``buf``; the Future gives bytes read (fewer
        only at end of file)."""
        return self._rw(False, [(file, buf, offset)], "pread")

    def pwrite(self, file: File, buf: Any, offset: int = 0) -> Future[int]:
        """Write all of ``buf`` at ``offset``; the Future gives bytes written."""
        return self._rw(True, [(file, buf, offset)], "pwrite")

    def preadv(self, file: File, bufs: Sequence[Any], offset: int = 0) -> Future[int]:
        """Read consecutive file bytes into several buffers (one Future)."""
        return self._rw(False, _consecutive(file, bufs, offset), "preadv")

    def pwritev(self, file: File, bufs: Sequence[Any], offset: int = 0) -> Future[int]:
        """Write several buffers to consecutive file bytes (one Future)."""
        return self._rw(True, _consecutive(file, bufs, offset), "pwritev")

    def read_batch(self, extents: Sequence[tuple[File, Any, int]]) -> Future[int]:
        """Read many ``(file, buf, offset)`` extents, across files, as one Future (total bytes)."""
        return self._rw(False, list(extents), "read_batch")

    def write_batch(self, extents: Sequence[tuple[File, Any, int]]) -> Future[int]:
        """Write many ``(file, buf, offset)`` extents, across files, as one Future (total bytes)."""
        return self._rw(True, list(extents), "write_batch")

    def fsync(self, file: File, *, datasync: bool = False) -> Future[None]:
        """fsync (or fdatasync) the file. Order it after writes by waiting for them first."""
        self._check_open()
        file = _file_arg(file)
        datasync = bool(datasync)
        i = next(self._ids)
        # The native request holds the file (and closes it last if it was closed meanwhile).
        fut: Future[None] = Future(None, convert=_none, what="fdatasync" if datasync else "fsync",
                                   path=file.path)
        return self._track(i, fut, lambda: self._c.fsync(i, file._c, datasync))

    def fallocate(self, file: File, offset: int, length: int, mode: int = 0) -> Future[None]:
        """Preallocate ``length`` bytes at ``offset`` (fallocate(2) mode flags)."""
        self._check_open()
        file = _file_arg(file)
        offset = check_int("fallocate offset", offset, 0, _MAX_IO_BYTES)
        length = check_int("fallocate length", length, 1, _MAX_IO_BYTES)
        mode = check_int("fallocate mode", mode, 0, 2**31 - 1)
        i = next(self._ids)
        fut: Future[None] = Future(None, convert=_none, what="fallocate", path=file.path)
        return self._track(i, fut, lambda: self._c.fallocate(i, file._c, mode, offset, length))

    def _rw(self, write: bool, extents: list[tuple[File, Any, int]], what: str) -> Future[int]:
        self._check_open()
        native = []
        keep = []
        for ext in extents:
            if not isinstance(ext, (tuple, list)):
                raise TypeError(f"extent must be a (file, buffer, offset) tuple, got "
                                f"{type(ext).__name__}")
            if len(ext) != 3:
                raise ValueError(f"extent must be (file, buffer, offset), got {ext!r}")
            file, buf, offset = ext
            file = _file_arg(file)
            offset = check_int("offset", offset, 0, _MAX_IO_BYTES)
            try:
                mv = memoryview(buf)  # pins the exporter (a bytearray cannot be resized meanwhile)
            except TypeError:
                raise TypeError(f"buffer must support the buffer protocol, got "
                                f"{type(buf).__name__}") from None
            if not write and mv.readonly:
                raise TypeError(f"cannot read into a read-only buffer ({type(buf).__name__})")
            native.append((file._c, mv, offset))
            keep.append(mv)  # the memoryview holds the buffer; the native request holds the file
        i = next(self._ids)
        path = extents[0][0].path if len(extents) == 1 else None
        fut: Future[int] = Future(None, what=what, path=path, keep=keep)
        return self._track(i, fut, lambda: self._c.rw(i, write, native))

    def _track(self, i: int, fut: Future[Any], submit: Any) -> Future[Any]:
        fut._c = submit()
        # The op may already be complete and its id drained before we get here: the dispatcher
        # then parked the id in _orphans, and we finish it ourselves.
        with self._book.lock:
            orphan = i in self._book.orphans
            if orphan:
                self._book.orphans.discard(i)
            else:
                self._book.inflight[i] = fut
        if orphan:
            fut._on_native_done()
        if self._dispatcher is None and len(self._book.inflight) > 4096:
            self.run_callbacks()  # manual mode: keep bookkeeping bounded even if nobody polls
        return fut

    # -- completion dispatch -----------------------------------------------------------------
    def run_callbacks(self) -> int:
        """Run callbacks of completed operations in this thread (``callbacks="manual"``).

        Returns how many operations were finished. Non-blocking.
        """
        n = _drain(self._cq.pop(0.0), self._book)
        self._log_notices()
        return n

    def _log_notices(self) -> None:
        for msg in self._c.take_notices():
            logger.warning("yrcache I/O engine: %s", msg)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self, *, cancel: bool = False) -> None:
        """Finish (or with ``cancel=True`` cancel, where not yet started) all work in flight, then
        stop the backend. Idempotent. Later calls raise :class:`ClosedError`."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._c.close(cancel)
        if self._dispatcher is not None:
            self._stop.set()
            self._cq.wake()
            if threading.current_thread() is not self._dispatcher:
                self._dispatcher.join()
        else:
            self.run_callbacks()
        self._log_notices()
        forget_at_exit(self)

    def _check_open(self) -> None:
        if self._closed:
            raise _C.ClosedError("I/O engine is closed")

    def _inject_faults(self, spec: str) -> None:
        """Test hook: make the backend return errors or short transfers, or delay its I/Os (see
        csrc/io/faults.h)."""
        self._c.set_faults(spec)

    def __enter__(self) -> IoEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"<yrcache.IoEngine backend={self.backend} qd={self.queue_depth} "
                f"chunk={self.chunk_bytes}{' closed' if self._closed else ''}>")


def _none(_: int) -> None:
    return None


def _consecutive(file: File, bufs: Sequence[Any], offset: int) -> list[tuple[File, Any, int]]:
    offset = check_int("offset", offset, 0, _MAX_IO_BYTES)
    out = []
    for b in bufs:
        out.append((file, b, offset))
        offset += memoryview(b).nbytes
    return out


class _Book:
    """Futures in flight, keyed by id (they keep buffers alive until their op completes)."""

    __slots__ = ("inflight", "lock", "orphans")

    def __init__(self) -> None:
        self.inflight: dict[int, Future[Any]] = {}
        self.orphans: set[int] = set()  # ids completed before _track registered them
        self.lock = threading.Lock()


def _drain(ids: list[int], book: _Book) -> int:
    done = []
    with book.lock:
        for i in ids:
            fut = book.inflight.pop(i, None)
            if fut is None:
                book.orphans.add(i)
            else:
                done.append(fut)
    for fut in done:
        fut._on_native_done()
    return len(done)


def _dispatch(native: Any, cq: Any, book: _Book, stop: threading.Event) -> None:
    """Dispatcher thread: waits (GIL released) for completions and runs their callbacks. Holds no
    reference to the IoEngine object, so an unreferenced engine can be collected and closed."""
    while True:
        _drain(cq.pop(0.5), book)
        for msg in native.take_notices():
            logger.warning("yrcache I/O engine: %s", msg)
        if stop.is_set() and not book.inflight:
            return


__all__ = ["File", "HostBuffer", "IoEngine"]
