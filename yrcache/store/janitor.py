# SPDX-License-Identifier: Apache-2.0
"""Capacity of a cache root shared by many processes on many nodes: a usage ledger and a janitor.

The budget counts the logical bytes of published objects (never ``df``: distributed file systems
such as MooseFS keep deleted files' space for minutes). Three pieces, all in the root itself, so
nothing is lost on restart and no metadata service is needed:

- ``.yrcache/usage.json``, the ledger: bytes published, as of the janitor's last scan plus what
  writers have added since. Writers add their bytes under an flock (batched), and read the ledger
  at most once a second; before a publish that would cross the budget they skip it (a cache may
  drop a write; it never blocks the serving loop) and wake the janitor.
- ``.yrcache/janitor.lock``: one janitor at a time across processes and nodes (flock works across
  MooseFS/NFS mounts). A process that cannot take it skips its pass: another one is working.
- The janitor pass: scan the tree (the file system is the index), reclaim temp files of crashed
  writers by age (or at once when the writer ran on this host and its pid is gone), delete least
  recently used objects (mtime, touched on hits) down to the low watermark, then delete objects
  whose parent chunk is gone (after a grace period, since chunks of one chain may be published out
  of order), so eviction never strands unreachable descendants.

The budget holds up to the bytes in flight plus what other writers add between their ledger
flushes (at most ``flush_bytes`` each); it returns below the low watermark within a janitor period
or two after writes stop.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import paths as L
from .._native import _C
from .format import ObjectFormatError, parse_header

logger = logging.getLogger(__name__)


def _host_tag() -> str:
    """Names this host's process-id space in temp-file names: hostname, boot id and pid namespace,
    so that "its pid is gone" is only concluded about writers whose pids we can actually see
    (containers sharing a root and a hostname have separate pid namespaces)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append(os.urandom(8).hex())  # unknown: never matches, temp files age out instead
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=4).hexdigest()


HOST_TAG = _host_tag()
_USAGE = "usage.json"
_USAGE_LOCK = "usage.lock"
_JANITOR_LOCK = "janitor.lock"


def _read_json(dirfd: int, name: str) -> dict[str, Any]:
    """The ledger as a dict; {} when it is missing, unreadable or not ours (it lives in a shared
    directory: never trust it, never fail a caller over it)."""
    try:
        fd = L.open_beneath(dirfd, name, os.O_RDONLY)
    except OSError:
        return {}
    try:
        raw = os.read(fd, 1 << 16)
    except OSError:
        return {}
    finally:
        os.close(fd)
    try:
        d = json.loads(raw)
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def _int(d: dict[str, Any], name: str) -> int:
    v = d.get(name, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _write_json(dirfd: int, name: str, d: dict[str, Any]) -> None:
    tmp = f".{name}.{HOST_TAG}.{os.getpid()}.{threading.get_ident():x}"
    fd = L.open_beneath(dirfd, tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, L.FILE_MODE)
    try:
        try:
            os.write(fd, json.dumps(d).encode())
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dirfd)
        except OSError:
            pass
        raise


class _Flock:
    def __init__(self, dirfd: int, name: str, *, blocking: bool) -> None:
        self.fd = L.open_beneath(dirfd, name, os.O_RDWR | os.O_CREAT, L.FILE_MODE)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BaseException:
            os.close(self.fd)
            raise

    def release(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)


class Usage:
    """This process's view of the root's ledger. Thread-safe."""

    def __init__(self, metafd: int, capacity: int | None, *, high_watermark: float = 0.95,
                 flush_bytes: int | None = None, refresh_s: float = 1.0) -> None:
        self.metafd = metafd
        self.capacity = capacity
        self.high_watermark = high_watermark
        self.flush_bytes = flush_bytes if flush_bytes is not None else \
            (max(1, capacity // 64) if capacity else 1 << 62)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._ledger = 0        # bytes per the ledger when last read
        self._pending = 0       # bytes this process published and has not yet added
        self._reserved = 0      # bytes of publishes admitted and still in flight
        self._read_at = 0.0
        self._flushed_at = time.monotonic()

    def estimate(self) -> int:
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_s:
                self._refresh_locked()
            return self._ledger + self._pending + self._reserved

    def refresh(self) -> None:
        """Re-read the ledger now (after a janitor pass)."""
        with self._lock:
            self._refresh_locked()

    def _refresh_locked(self) -> None:
        if self.metafd < 0:  # closed, or a load-only root without a ledger: keep what we know
            self._read_at = time.monotonic()
            return
        d = _read_json(self.metafd, _USAGE)
        self._ledger = _int(d, "bytes")
        self._read_at = time.monotonic()

    def admit(self, nbytes: int) -> tuple[bool, bool]:
        """(admit, wake_janitor) for a publish of ``nbytes``. An admitted publish holds a
        reservation until :meth:`added` (published) or :meth:`release` (failed)."""
        if not self.capacity:
            return True, False
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_s:
                self._refresh_locked()
            est = self._ledger + self._pending + self._reserved + nbytes
            ok = est <= self.capacity
            if ok:
                self._reserved += nbytes
        return ok, est > self.capacity * self.high_watermark

    def close(self) -> None:
        """Stop using the ledger's directory (its descriptor is closed by its owner): later
        estimates answer from memory, never through a descriptor number reused meanwhile."""
        with self._lock:
            self.metafd = -1

    def release(self, nbytes: int) -> None:
        if self.capacity:
            with self._lock:
                self._reserved -= nbytes

    def added(self, nbytes: int) -> None:
        with self._lock:
            if self.capacity:
                self._reserved -= nbytes
            self._pending += nbytes
            due = self._pending >= self.flush_bytes or \
                time.monotonic() - self._flushed_at > self.refresh_s
        if due:
            self.flush()

    def flush(self) -> None:
        """Add this process's published bytes to the ledger. The bytes stay counted as pending
        until the ledger holds them, so a concurrent admit never sees them in neither place."""
        with self._flush_lock:
            with self._lock:
                pending = self._pending
            if not pending or self.metafd < 0:
                return
            try:
                lk = _Flock(self.metafd, _USAGE_LOCK, blocking=True)
            except OSError as e:
                logger.warning("yrcache: cannot lock the usage ledger: %s", e)
                return
            try:
                d = _read_json(self.metafd, _USAGE)
                d["bytes"] = _int(d, "bytes") + pending
                d["added"] = _int(d, "added") + pending
                if self.capacity:
                    d["capacity"] = self.capacity
                _write_json(self.metafd, _USAGE, d)
            except OSError as e:  # e.g. ENOSPC: the bytes stay pending, a put never fails on it
                logger.warning("yrcache: cannot update the usage ledger: %s", e)
                return
            finally:
                lk.release()
            with self._lock:
                self._pending -= pending
                self._ledger = d["bytes"]
                self._read_at = self._flushed_at = time.monotonic()


@dataclass
class JanitorReport:
    ran: bool = False                # False: another process held the lock
    objects: int = 0                 # after the pass
    bytes: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    orphans: int = 0
    tmp_reclaimed: int = 0
    corrupt: int = 0
    seconds: float = 0.0
    by_namespace: dict[str, int] = field(default_factory=dict)


class Janitor:
    """Runs capacity passes over one root. ``run_once`` is safe to call from any process at any
    time; concurrent callers elsewhere simply skip."""

    def __init__(self, root_fd: int, *, capacity: int | None, low_watermark: float = 0.85,
                 high_watermark: float = 0.95, tmp_max_age: float = 600.0, orphan_grace: float = 60.0,
                 on_evict: Callable[[str, str], None] | None = None,
                 read_only: bool = False) -> None:
        if capacity is not None and capacity <= 0:
            raise ValueError(f"capacity must be > 0 bytes, got {capacity}")
        if not 0 < low_watermark <= high_watermark <= 1:
            raise ValueError(f"need 0 < low_watermark <= high_watermark <= 1, got "
                             f"{low_watermark}, {high_watermark}")
        self.rootfd = root_fd
        self.capacity = capacity
        self.low_watermark = low_watermark
        self.high_watermark = high_watermark
        self.tmp_max_age = tmp_max_age
        self.orphan_grace = orphan_grace
        self.on_evict = on_evict
        #: a load-only root: passes do nothing (no lock taken, nothing removed, no ledger written)
        self.read_only = read_only
        self.metafd = self.tmpfd = -1
        if read_only:  # the ledger is read when it exists; nothing is created
            self.metafd = _open_dir_if_present(root_fd, L.META_DIR)
        else:
            self.metafd = L.open_dir(root_fd, L.META_DIR, create=True)
            try:
                self.tmpfd = L.open_dir(root_fd, L.TMP_DIR, create=True)
            except BaseException:
                os.close(self.metafd)
                raise
        # (ns, key, ino) -> (parent hex, chunk index): headers are immutable, read each once.
        # Holds only objects the last pass saw alive (pruned after every pass), so it follows
        # the live set under churn instead of growing with every object ever published.
        self._parents: dict[tuple[str, str, int], tuple[str, int]] = {}

    def close(self) -> None:
        for fd in (self.metafd, self.tmpfd):
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self.metafd = self.tmpfd = -1
        self._parents.clear()

    # -- temp files -----------------------------------------------------------------------------
    def reclaim_tmp(self, now: float | None = None) -> int:
        """Remove temp files of writers that are gone: older than tmp_max_age, or written on this
        host by a pid that no longer exists (names carry host tag and pid)."""
        if self.read_only or self.tmpfd < 0:
            return 0
        now = time.time() if now is None else now
        n = 0
        for e in L._scandir(self.tmpfd):
            if not e.name.endswith(L.TMP_SUFFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            dead = now - st.st_mtime > self.tmp_max_age
            if not dead:
                parts = e.name.split("-")
                if len(parts) >= 3 and parts[0] == HOST_TAG and parts[1].isdigit():
                    dead = not _pid_alive(int(parts[1]))
            if dead:
                try:
                    os.unlink(e.name, dir_fd=self.tmpfd)
                    n += 1
                except OSError:
                    pass
        return n

    # -- one pass -------------------------------------------------------------------------------
    def run_once(self, *, blocking: bool = False) -> JanitorReport:
        rep = JanitorReport()
        if self.read_only or self.metafd < 0:  # load-only root, or closed: nothing to do
            return rep
        try:
            lk = _Flock(self.metafd, _JANITOR_LOCK, blocking=blocking)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return rep
            raise
        t0 = time.monotonic()
        try:
            rep.ran = True
            added0 = self._ledger_added()
            rep.tmp_reclaimed = self.reclaim_tmp()
            objs = list(L.walk_objects(self.rootfd))
            total = sum(o.size for o in objs)
            alive: dict[str, set[str]] = defaultdict(set)
            for o in objs:
                alive[o.ns_hex].add(o.key_hex)
            gone: set[tuple[str, str]] = set()
            # Every pass brings usage to the low watermark; the high watermark is when writers
            # wake the janitor early (Usage.admit), so there is room for writes during a pass.
            if self.capacity is not None and total > self.capacity * self.low_watermark:
                target = int(self.capacity * self.low_watermark)
                for o in self._eviction_order(objs):
                    if total <= target:
                        break
                    r = self._remove(o)
                    if r in ("replaced", "error"):  # alive (published again) or not removable
                        continue
                    total -= o.size
                    if r == "removed":
                        rep.evicted += 1
                        rep.evicted_bytes += o.size
                    gone.add((o.ns_hex, o.key_hex))
                    alive[o.ns_hex].discard(o.key_hex)
            # Orphans: chunks whose parent is gone, children after parents so chains fall at once.
            now = time.time()
            rest = [o for o in objs if (o.ns_hex, o.key_hex) not in gone]
            rest.sort(key=self._chunk_index)
            for o in rest:
                info = self._parent_of(o)
                if info is _UNREADABLE:  # a read error (EIO, EACCES...): decide nothing now
                    continue
                if info is None:  # not a valid object (bad header): remove after the grace
                    if now - o.mtime > self.orphan_grace and self._remove(o) == "removed":
                        rep.corrupt += 1
                        total -= o.size
                        alive[o.ns_hex].discard(o.key_hex)
                    continue
                parent, idx = info
                if idx == 0 or parent in alive[o.ns_hex] or now - o.mtime <= self.orphan_grace:
                    continue
                r = self._remove(o)
                if r in ("replaced", "error"):
                    continue
                if r == "removed":
                    rep.orphans += 1
                total -= o.size
                alive[o.ns_hex].discard(o.key_hex)
            rep.bytes = total
            rep.objects = sum(len(v) for v in alive.values())
            live = {(o.ns_hex, o.key_hex, o.ino) for o in objs if o.key_hex in alive[o.ns_hex]}
            self._parents = {k: v for k, v in self._parents.items() if k in live}
            rep.by_namespace = {k: len(v) for k, v in alive.items() if v}
            try:
                self._write_ledger(total, added0, rep)
            except OSError as e:  # a broken ledger must not stop eviction
                logger.warning("yrcache janitor: cannot write the usage ledger: %s", e)
        finally:
            lk.release()
        rep.seconds = time.monotonic() - t0
        if rep.evicted or rep.orphans or rep.tmp_reclaimed or rep.corrupt:
            logger.info("yrcache janitor: %d objects %.1f MiB; evicted %d (%.1f MiB), orphans %d, "
                        "temp files %d, invalid %d in %.2fs", rep.objects, rep.bytes / 2**20,
                        rep.evicted, rep.evicted_bytes / 2**20, rep.orphans, rep.tmp_reclaimed,
                        rep.corrupt, rep.seconds)
        return rep

    def _ledger_added(self) -> int:
        lk = _Flock(self.metafd, _USAGE_LOCK, blocking=True)
        try:
            return _int(_read_json(self.metafd, _USAGE), "added")
        finally:
            lk.release()

    def _write_ledger(self, scanned: int, added0: int, rep: JanitorReport) -> None:
        # Bytes added while we scanned may or may not be in `scanned`: count them (overestimate,
        # the safe direction; the next pass corrects it).
        lk = _Flock(self.metafd, _USAGE_LOCK, blocking=True)
        try:
            d = _read_json(self.metafd, _USAGE)
            added = _int(d, "added")
            d.update(bytes=scanned + max(0, added - added0), objects=rep.objects,
                     scanned_at=time.time(), scanned_by=f"{socket.gethostname()}:{os.getpid()}",
                     capacity=self.capacity)
            _write_json(self.metafd, _USAGE, d)
        finally:
            lk.release()

    def _eviction_order(self, objs: list[L.ObjectEntry]) -> list[L.ObjectEntry]:
        """Least recently used first, a chain from its tail: an object's age is that of its newest
        descendant (so a prefix outlives every chain that extends it), children before parents."""
        info = {(o.ns_hex, o.key_hex): self._parent_of(o) for o in objs}
        recent = {(o.ns_hex, o.key_hex): o.mtime for o in objs}

        def depth(o: L.ObjectEntry) -> int:
            i = info[(o.ns_hex, o.key_hex)]
            return i[1] if isinstance(i, tuple) else 0

        for o in sorted(objs, key=depth, reverse=True):  # deepest first: push ages up the chain
            i = info[(o.ns_hex, o.key_hex)]
            if isinstance(i, tuple) and i[1] > 0:
                p = (o.ns_hex, i[0])
                if p in recent:
                    recent[p] = max(recent[p], recent[(o.ns_hex, o.key_hex)])
        return sorted(objs, key=lambda o: (recent[(o.ns_hex, o.key_hex)], -depth(o)))

    def _chunk_index(self, o: L.ObjectEntry) -> int:
        info = self._parent_of(o)
        return info[1] if isinstance(info, tuple) else 0

    def _parent_of(self, o: L.ObjectEntry) -> Any:
        """(parent hex, chunk index); None for an invalid header; _UNREADABLE on a read error."""
        k = (o.ns_hex, o.key_hex, o.ino)
        hit = self._parents.get(k)
        if hit is not None:
            return hit
        try:
            with L.opened_dir(self.rootfd, f"{o.ns_hex}/{o.key_hex[:2]}/{o.key_hex[2:4]}") as d:
                fd = L.open_beneath(d, o.key_hex + L.OBJ_SUFFIX, os.O_RDONLY)
                try:
                    raw = read_header_bytes(fd)
                finally:
                    os.close(fd)
            h = parse_header(raw, key=bytes.fromhex(o.key_hex), ns=bytes.fromhex(o.ns_hex))
        except ObjectFormatError as e:
            # Another format version shares the root (its own namespace): not ours to judge.
            return _UNREADABLE if str(e).startswith("unsupported format version") else None
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ESTALE):
                logger.debug("janitor: cannot read %s: %s", o.key_hex, e)
            return _UNREADABLE
        info = (h.parent.hex(), h.chunk_index)
        self._parents[k] = info
        return info

    def _remove(self, o: L.ObjectEntry) -> str:
        """"removed", "gone" (someone else removed it), "replaced" (published again since the
        scan: a new inode, left alone) or "error"."""
        try:
            with L.opened_dir(self.rootfd, f"{o.ns_hex}/{o.key_hex[:2]}/{o.key_hex[2:4]}") as d:
                st = os.stat(o.key_hex + L.OBJ_SUFFIX, dir_fd=d, follow_symlinks=False)
                if st.st_ino != o.ino:
                    return "replaced"
                os.unlink(o.key_hex + L.OBJ_SUFFIX, dir_fd=d)
        except OSError as e:
            return "gone" if e.errno in (errno.ENOENT, errno.ESTALE) else "error"
        if self.on_evict is not None:
            self.on_evict(o.ns_hex, o.key_hex)
        return "removed"


def _open_dir_if_present(dirfd: int, rel: str) -> int:
    """A descriptor of directory ``rel``, or -1 when it is absent or not ours to open."""
    try:
        return L.open_dir(dirfd, rel)
    except OSError:
        return -1


_UNREADABLE = object()
MAX_HEADER_BYTES = 1 << 20


def read_header_bytes(fd: int) -> bytes:
    """The header of an object file: 4 KiB, or its declared size (objects with over 120 layers),
    capped at MAX_HEADER_BYTES. Raises ObjectFormatError for an impossible size."""
    raw = os.pread(fd, 4096, 0)
    h, _, need = _C.store.parse_header(raw)
    if h is None and need:
        if need > MAX_HEADER_BYTES:
            raise ObjectFormatError(f"header size {need} out of range")
        raw = os.pread(fd, need, 0)
    return raw


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["HOST_TAG", "Janitor", "JanitorReport", "Usage"]
