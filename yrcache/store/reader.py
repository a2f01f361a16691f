# SPDX-License-Identifier: Apache-2.0
"""The store's verified-read path: open an object beneath the namespace directory, read the
chosen segments (with the header in the same batch when the layout is known), verify everything
(namespace, key, geometry, size, checksums, MAC), and answer a :class:`GetResult`: a hit, or a
miss that says why. Verified objects stay open for a moment (layer-by-layer loads of one chunk
open it and check its header once). An invalid object is removed, but only while its name still
holds the inode found bad.

:func:`verify_file` is the same verification for tools (``yrcache fsck``).
"""
from __future__ import annotations

import errno
import os
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..io.engine import HostBuffer, IoEngine
from . import check, paths
from .format import ObjectFormatError, parse_header, segment_offsets, verify_segments

if TYPE_CHECKING:
    from .state import StoreState

#: errno values that mean "the object is not there (any more)": a plain miss, not an error.
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ESTALE, errno.ENOTDIR})
#: errno values of an entry that is not one of ours (a symlink, a directory, a FIFO...): corrupt.
FOREIGN_ERRNOS = frozenset({errno.ELOOP, errno.EXDEV, errno.EISDIR, errno.EINVAL})


@dataclass(frozen=True)
class GetResult:
    """Outcome of a load. ``ok`` False means a miss; ``reason`` says why ("missing", "corrupt: ...",
    "error: [Errno ...]"). On a miss the destination buffers hold undefined bytes."""

    ok: bool
    key: bytes
    reason: str = ""
    header: Any = None

    def __bool__(self) -> bool:
        return self.ok


#: seconds after its last change during which a short object is taken for one not yet fully
#: visible on this client (a miss) rather than a truncated one (removed)
RECENT_S = 10.0


def _short(e: ObjectFormatError) -> bool:
    m = str(e)
    return m.startswith(("truncated", "file is ", "header is "))


class _MismatchError(ObjectFormatError):
    """The object is valid but does not fit the request (the caller's buffers or range)."""


class _Handle:
    """An open, verified object: its File and parsed header, shared by concurrent loads."""

    __slots__ = ("file", "header", "ino", "opened", "users", "retired")

    def __init__(self, file: Any, header: Any, ino: int, opened: float) -> None:
        self.file, self.header, self.ino, self.opened = file, header, ino, opened
        self.users = 0
        self.retired = False


def scratch(n: int) -> memoryview:
    """``n`` bytes of transient page-aligned memory (a page at least, for O_DIRECT). Small pages:
    a huge page asked for may make the kernel compact memory on the first touch."""
    return memoryview(HostBuffer(max(4096, n), huge_pages=False))[:n]


def read_verify(engine: IoEngine, f: Any, size: int, key: bytes, views: list[memoryview],
                layers: list[int] | None, lengths: list[int] | None,
                byte_range: tuple[int, int] | None, *, ns: bytes, mac_key: bytes | None,
                known: Any = None) -> Any:
    """Read segments of the object open as ``f`` (``size`` bytes) into ``views`` and verify
    them; returns its header. ``layers`` picks segments (default: all); ``lengths`` (every
    segment's, when known) lets the header travel in the same batch as the segments; ``known``
    is a header already verified. Raises ObjectFormatError (_MismatchError when the object does not
    fit the request) or OSError."""
    idx = layers if layers is not None else list(range(len(views)))
    h = known
    if lengths is None:  # no expected layout: header first (unless known), then the segments
        if h is None:
            h = read_header(engine, f, ns=ns, key=key, mac_key=mac_key)
        lengths = [h.segment(i)[1] for i in range(h.segment_count)]
        if any(i >= len(lengths) for i in idx):
            raise ObjectFormatError("object has fewer segments than asked for")
    if byte_range is None:
        targets = views
        for t, i in zip(targets, idx):  # lengths came from the object, not the caller
            if t.nbytes != lengths[i]:
                raise _MismatchError(f"segment {i} is {lengths[i]} bytes, the caller expects "
                                f"{t.nbytes}")
    else:  # whole segments into scratch, verify, then copy the range out
        if any(byte_range[0] + byte_range[1] > lengths[i] for i in idx):
            raise _MismatchError(f"byte_range {byte_range} exceeds a segment")
        targets = [scratch(lengths[i]) for i in idx]
    hb, offs, _ = segment_offsets(lengths)
    extents: list[tuple[Any, Any, int]] = [(f, t, offs[i]) for t, i in zip(targets, idx)]
    want = sum(t.nbytes for t in targets)
    hdr = None
    if h is None:  # speculative: the header travels in the same batch as the segments
        hdr = HostBuffer(hb)
        extents.insert(0, (f, hdr, 0))
        want += hb
    got = engine.read_batch(extents).result()
    if hdr is not None and got >= hb:  # the header first: a wrong geometry is not a short read
        h = parse_header(memoryview(hdr), ns=ns, key=key, mac_key=mac_key)
        if h.segment_count != len(lengths) or any(
                h.segment(i)[1] != n for i, n in enumerate(lengths)):
            raise ObjectFormatError("segment lengths differ from the expected layout")
    if got != want:
        raise ObjectFormatError(f"truncated object ({got} of {want} bytes read)")
    if hdr is not None:
        h = parse_header(memoryview(hdr), ns=ns, key=key, mac_key=mac_key)
    if size != h.object_bytes:
        raise ObjectFormatError(f"file is {size} bytes, header says {h.object_bytes}")
    verify_segments(h, list(zip(idx, targets)), mac_key=mac_key)
    if byte_range is not None:
        s, n = byte_range
        for v, t in zip(views, targets):
            v[:] = t[s:s + n]
    return h


def read_header(engine: IoEngine, f: Any, *, ns: bytes, key: bytes, mac_key: bytes | None
                ) -> Any:
    """The verified header of the object open as ``f``: 4 KiB, or its declared size."""
    hdr = HostBuffer(4096)
    got = engine.pread(f, hdr, 0).result()
    need = check.header_bytes_needed(memoryview(hdr)[:got])
    if need:
        hdr = HostBuffer(need)
        got = engine.pread(f, hdr, 0).result()
    return parse_header(memoryview(hdr)[:got], ns=ns, key=key, mac_key=mac_key)


def verify_file(engine: IoEngine, f: Any, size: int, *, ns: bytes, key: bytes,
                mac_key: bytes | None) -> Any:
    """Verify a whole object open as ``f`` (``size`` bytes) one segment at a time, as loads
    verify it; returns its header. Raises ObjectFormatError or OSError."""
    h = read_header(engine, f, ns=ns, key=key, mac_key=mac_key)
    if size != h.object_bytes:
        raise ObjectFormatError(f"file is {size} bytes, header says {h.object_bytes}")
    for i in range(h.segment_count):
        n = h.segment(i)[1]
        read_verify(engine, f, size, key, [scratch(n)], [i], None, None, ns=ns, mac_key=mac_key,
                    known=h)
    return h


def miss_reason(e: BaseException) -> str:
    """The GetResult reason of a load that failed with ``e``."""
    if isinstance(e, ObjectFormatError):
        return f"corrupt: {e}"
    if isinstance(e, OSError) and e.errno in MISSING_ERRNOS:
        return "missing"
    return f"error: {e}"


class Reader:
    """Loads for one :class:`~yrcache.store.store.Store`: it shares the store's
    :class:`~yrcache.store.state.StoreState` (lock, counters, index, namespace directory), and
    owns the open-object cache (``handle_ttl`` seconds, at most ``max_handles`` objects).
    ``direct``: open objects with O_DIRECT (False: through the page cache, Store's read_cache)."""

    def __init__(self, state: StoreState, engine: IoEngine, *, handle_ttl: float,
                 max_handles: int, direct: bool) -> None:
        self._state = state
        self._engine = engine
        self._direct = direct
        self.handle_ttl = handle_ttl
        self._max_handles = max_handles
        self._handles: OrderedDict[bytes, _Handle] = OrderedDict()

    def retire(self, key: bytes) -> None:
        """Stop keeping ``key``'s object open (its name now holds another inode). Call it with
        the store's lock held."""
        hd = self._handles.get(key)
        if hd is not None:
            self.retire_locked(key, hd)

    def retire_all(self) -> None:
        with self._state.lock:
            for k, hd in list(self._handles.items()):
                self.retire_locked(k, hd)

    def get(self, key: bytes, views: list[memoryview], layers: list[int] | None,
            lengths: list[int] | None, byte_range: tuple[int, int] | None, *,
            remove_bad: bool = True, count: bool = True) -> GetResult:
        """Load and verify (see Store.get); a miss for anything wrong. ``remove_bad`` removes an
        invalid object; ``count`` (loads, not tools) counts stats and keeps the object open."""
        gen = self._state.forgets  # an object forgotten meanwhile is neither indexed nor kept open
        hd = self._acquire_handle(key) if count else None
        if hd is not None:  # open and verified moments ago: read just the segments
            r = self._get_held(key, hd, views, layers, lengths, byte_range, remove_bad, count, gen)
            if r is not None:
                return r
        nsfd = self._state.ns_dir()
        if nsfd is None:  # a load-only store whose namespace does not exist (yet)
            return self._miss(key, FileNotFoundError(errno.ENOENT, "no namespace directory"),
                              count)
        try:
            f = self._engine.open(paths.object_relpath(key.hex()), "r", dir_fd=nsfd,
                                  direct=self._direct)
        except OSError as e:
            if e.errno in FOREIGN_ERRNOS:  # a symlink or directory where an object should be
                return self._corrupt(key, -1, f"not an object file ({errno.errorcode[e.errno]})",
                                     remove_bad and e.errno == errno.ELOOP, count)
            return self._miss(key, e, count)
        return self._get_opened(key, f, views, layers, lengths, byte_range, remove_bad, count,
                                gen)

    def _get_held(self, key: bytes, hd: _Handle, views: list[memoryview],
                  layers: list[int] | None, lengths: list[int] | None,
                  byte_range: tuple[int, int] | None, remove_bad: bool, count: bool,
                  gen: int) -> GetResult | None:
        """A load through a kept-open object; None when its name now holds another object
        (read that one)."""
        try:
            h = hd.header
            if lengths is not None and (h.segment_count != len(lengths) or any(
                    h.segment(i)[1] != n for i, n in enumerate(lengths))):
                raise ObjectFormatError("segment lengths differ from the expected layout")
            read_verify(self._engine, hd.file, h.object_bytes, key, views, layers, None,
                        byte_range, ns=self._state.ns, mac_key=self._state.mac, known=h)
        except _MismatchError as e:
            self._release_handle(hd)
            return self._mismatch(key, str(e), count)
        except (ObjectFormatError, OSError) as e:
            self._retire_handle(key, hd)
            self._release_handle(hd)
            # The name may hold a new object by now (put(dedup=False) here, in another Store
            # or on another node, after a load failed): read that one instead of reporting
            # the descriptor's old inode. Otherwise the old inode is the object: judge it.
            if self._replaced(key, hd.ino):
                return None
            if isinstance(e, ObjectFormatError):
                return self._corrupt(key, hd.ino, str(e), remove_bad, count)
            return self._miss(key, e, count)
        self._release_handle(hd)
        self._state.bump("open_handle_hits")
        return self.hit(key, views, h, count, gen)

    def _get_opened(self, key: bytes, f: Any, views: list[memoryview],
                    layers: list[int] | None, lengths: list[int] | None,
                    byte_range: tuple[int, int] | None, remove_bad: bool, count: bool,
                    gen: int) -> GetResult:
        """A load through a fresh open ``f`` of the object (closed or kept open here)."""
        ino = -1
        try:
            st = os.fstat(f.fileno())
            ino = st.st_ino
            if not stat.S_ISREG(st.st_mode):
                raise ObjectFormatError("not a regular file")
            h = read_verify(self._engine, f, st.st_size, key, views, layers, lengths,
                            byte_range, ns=self._state.ns, mac_key=self._state.mac)
        except _MismatchError as e:
            f.close()
            return self._mismatch(key, str(e), count)
        except ObjectFormatError as e:
            f.close()
            if _short(e) and time.time() - st.st_mtime < RECENT_S:
                # A short view of a just-published object: another client of a shared file system
                # may not see all of it yet (seen once on MooseFS: a fresh object read as 0
                # bytes). A miss now; an object that stays short is removed by a later load,
                # the janitor or fsck.
                self._state.bump("incomplete")
                return self._miss(key, FileNotFoundError(errno.ENOENT, "not fully visible yet"),
                                  count)
            return self._corrupt(key, ino, str(e), remove_bad, count)
        except OSError as e:
            f.close()
            return self._miss(key, e, count)
        if not (count and self.adopt_handle(key, f, h, ino, gen)):
            f.close()
        return self.hit(key, views, h, count, gen)

    def hit(self, key: bytes, views: list[memoryview], h: Any, count: bool,
            gen: int) -> GetResult:
        nbytes = sum(v.nbytes for v in views)
        st = self._state
        with st.lock:
            if count:
                st.counters["hits"] += 1
                st.counters["bytes_read"] += nbytes
            # Not if a concurrent read (another layer of the same object) found it corrupt and
            # removed it meanwhile: "exists" would then hold for index_ttl, so the engine would
            # neither store the chunk again nor stop looking it up.
            if st.forgets == gen:
                st.index_add_locked(key, time.monotonic())
        return GetResult(True, key, "", h)

    def _acquire_handle(self, key: bytes) -> _Handle | None:
        with self._state.lock:
            hd = self._handles.get(key)
            if hd is None:
                return None
            if time.monotonic() - hd.opened > self.handle_ttl:
                self.retire_locked(key, hd)
                return None
            hd.users += 1
            self._handles.move_to_end(key)
            return hd

    def _release_handle(self, hd: _Handle) -> None:
        with self._state.lock:
            hd.users -= 1
            close = hd.retired and hd.users == 0
        if close:
            hd.file.close()

    def adopt_handle(self, key: bytes, f: Any, h: Any, ino: int, gen: int) -> bool:
        if self.handle_ttl <= 0 or self._max_handles <= 0:
            return False
        with self._state.lock:
            # An object forgotten (found corrupt by a concurrent read of another layer, deleted,
            # evicted) since this open may be gone, or replaced by a new object: keeping the old
            # descriptor would serve the removed inode to later loads. Any forget skips adoption.
            if key in self._handles or self._state.closed or self._state.forgets != gen:
                return False
            self._handles[key] = _Handle(f, h, ino, time.monotonic())
            while len(self._handles) > self._max_handles:
                k, old = next(iter(self._handles.items()))
                self.retire_locked(k, old)
        return True

    def _retire_handle(self, key: bytes, hd: _Handle) -> None:
        with self._state.lock:
            self.retire_locked(key, hd)

    def retire_locked(self, key: bytes, hd: _Handle) -> None:
        if self._handles.get(key) is hd:
            del self._handles[key]
        if not hd.retired:
            hd.retired = True
            if hd.users == 0:
                hd.file.close()  # marks it closed; descriptors go when in-flight reads finish

    def _mismatch(self, key: bytes, why: str, count: bool) -> GetResult:
        # A valid object that does not fit what the caller asked for: a miss; the object stays.
        if count:
            self._state.bump("misses")
        self._state.log_once("mismatch", key.hex(), "yrcache: object %s does not match the "
                             "request (%s)", key.hex(), why)
        return GetResult(False, key, f"mismatch: {why}")

    def _corrupt(self, key: bytes, ino: int, why: str, remove: bool, count: bool) -> GetResult:
        if count:
            self._state.bump("corrupt")
            self._state.bump("misses")
        self._state.forget(key)
        self._state.log_once("corrupt", key.hex(), "yrcache: object %s is invalid (%s)%s",
                             key.hex(), why, "; removed" if remove else "")
        if remove:
            self._remove_if_same(key, ino)
        return GetResult(False, key, f"corrupt: {why}")

    def _miss(self, key: bytes, e: OSError, count: bool = True) -> GetResult:
        if count:
            self._state.bump("misses")
        self._state.forget(key)
        if e.errno not in MISSING_ERRNOS:
            if count:
                self._state.count_error(e.errno or 0, "load")
            self._state.log_once("load-errno", str(e.errno), "yrcache: load of %s failed: %s",
                                 key.hex(), e)
            return GetResult(False, key, f"error: {e}")
        return GetResult(False, key, "missing")

    def _remove_if_same(self, key: bytes, ino: int) -> None:
        # Only the inode we found bad: a writer may have renamed a good object over it meanwhile.
        if self._state.read_only or self._state.nsfd is None:  # load-only: removes nothing
            return
        check.remove_if_same(self._state.nsfd, paths.object_relpath(key.hex()), ino)

    def _replaced(self, key: bytes, ino: int) -> bool:
        """Whether the object's name now holds another inode than ``ino`` (a stat, no open)."""
        if self._state.nsfd is None:
            return False
        return check.holds_other_inode(self._state.nsfd, paths.object_relpath(key.hex()), ino)


__all__ = ["FOREIGN_ERRNOS", "MISSING_ERRNOS", "RECENT_S", "GetResult", "Reader", "miss_reason",
           "read_header", "read_verify", "verify_file"]
