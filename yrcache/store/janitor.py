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

from . import check, paths
from .format import ObjectFormatError

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
        return check.read_json(dirfd, name, 1 << 16)
    except (OSError, ValueError):
        return {}


def _int(d: dict[str, Any], name: str) -> int:
    v = d.get(name, 0)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _write_json(dirfd: int, name: str, d: dict[str, Any]) -> None:
    tmp = f".{name}.{HOST_TAG}.{os.getpid()}.{threading.get_ident():x}"
    check.write_then_rename(dirfd, name, json.dumps(d).encode(), tmp)


class _Flock:
    def __init__(self, dirfd: int, name: str, *, blocking: bool) -> None:
        self.fd = paths.open_beneath(dirfd, name, os.O_RDWR | os.O_CREAT, paths.FILE_MODE)
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
                 high_watermark: float = 0.95, tmp_max_age: float = 600.0,
                 orphan_grace: float = 60.0,
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
            self.metafd = _open_dir_if_present(root_fd, paths.META_DIR)
        else:
            self.metafd = paths.open_dir(root_fd, paths.META_DIR, create=True)
            try:
                self.tmpfd = paths.open_dir(root_fd, paths.TMP_DIR, create=True)
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
        for name, st in check.scan_stats(self.tmpfd):
            if not name.endswith(paths.TMP_SUFFIX):
                continue
            dead = now - st.st_mtime > self.tmp_max_age
            if not dead:
                parts = name.split("-")
                if len(parts) >= 3 and parts[0] == HOST_TAG and parts[1].isdigit():
                    dead = not _pid_alive(int(parts[1]))
            if dead:
                try:
                    os.unlink(name, dir_fd=self.tmpfd)
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
            self._pass(rep)
        finally:
            lk.release()
        rep.seconds = time.monotonic() - t0
        if rep.evicted or rep.orphans or rep.tmp_reclaimed or rep.corrupt:
            logger.info("yrcache janitor: %d objects %.1f MiB; evicted %d (%.1f MiB), orphans %d, "
                        "temp files %d, invalid %d in %.2fs", rep.objects, rep.bytes / 2**20,
                        rep.evicted, rep.evicted_bytes / 2**20, rep.orphans, rep.tmp_reclaimed,
                        rep.corrupt, rep.seconds)
        return rep

    def _pass(self, rep: JanitorReport) -> None:
        """One pass under the janitor lock: temp files, eviction, invalid objects, orphans, and
        the ledger."""
        added0 = self._ledger_added()
        rep.tmp_reclaimed = self.reclaim_tmp()
        objs = list(paths.walk_objects(self.rootfd))
        alive: dict[str, set[str]] = defaultdict(set)
        for o in objs:
            alive[o.ns_hex].add(o.key_hex)
        total = sum(o.size for o in objs)
        gone: set[tuple[str, str]] = set()
        total = self._evict(objs, total, alive, gone, rep)
        rest = [o for o in objs if (o.ns_hex, o.key_hex) not in gone]
        total = self._remove_unchained(rest, total, alive, rep)
        rep.bytes = total
        rep.objects = sum(len(v) for v in alive.values())
        live = {(o.ns_hex, o.key_hex, o.ino) for o in objs if o.key_hex in alive[o.ns_hex]}
        self._parents = {k: v for k, v in self._parents.items() if k in live}
        rep.by_namespace = {k: len(v) for k, v in alive.items() if v}
        try:
            self._write_ledger(total, added0, rep)
        except OSError as e:  # a broken ledger must not stop eviction
            logger.warning("yrcache janitor: cannot write the usage ledger: %s", e)

    def _evict(self, objs: list[paths.ObjectEntry], total: int, alive: dict[str, set[str]],
               gone: set[tuple[str, str]], rep: JanitorReport) -> int:
        """Evict least recently used objects down to the low watermark; returns the bytes left.
        Every pass brings usage to the low watermark; the high watermark is when writers wake the
        janitor early (Usage.admit), so there is room for writes during a pass."""
        if self.capacity is None or total <= self.capacity * self.low_watermark:
            return total
        target = int(self.capacity * self.low_watermark)
        for o in self._eviction_order(objs):
            if total <= target:
                break
            r = self._remove(o)
            if r not in ("removed", "gone"):  # alive (published again) or not removable
                continue
            total -= o.size
            if r == "removed":
                rep.evicted += 1
                rep.evicted_bytes += o.size
            gone.add((o.ns_hex, o.key_hex))
            alive[o.ns_hex].discard(o.key_hex)
        return total

    def _remove_unchained(self, objs: list[paths.ObjectEntry], total: int,
                          alive: dict[str, set[str]], rep: JanitorReport) -> int:
        """Remove invalid objects, then chunks whose parent is gone (children after parents, so
        chains fall at once), both once older than orphan_grace; returns the bytes left."""
        now = time.time()
        chunks = []
        for o in sorted(objs, key=self._chunk_index):
            info = self._parent_of(o)
            if info is _UNREADABLE:  # a read error (EIO, EACCES...): decide nothing now
                continue
            if info is not None:
                chunks.append((o, o.ns_hex, *info))
            elif now - o.mtime > self.orphan_grace and self._remove(o) == "removed":
                rep.corrupt += 1  # not a valid object (bad header)
                total -= o.size
                alive[o.ns_hex].discard(o.key_hex)
        for o, *_ in check.orphans(chunks, alive):
            if now - o.mtime <= self.orphan_grace:
                continue
            r = self._remove(o)
            if r not in ("removed", "gone"):
                continue
            if r == "removed":
                rep.orphans += 1
            total -= o.size
            alive[o.ns_hex].discard(o.key_hex)
        return total

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

    def _eviction_order(self, objs: list[paths.ObjectEntry]) -> list[paths.ObjectEntry]:
        """Least recently used first, a chain from its tail: an object's age is that of its newest
        descendant (so a prefix outlives every chain that extends it), children before parents."""
        info = {(o.ns_hex, o.key_hex): self._parent_of(o) for o in objs}
        recent = {(o.ns_hex, o.key_hex): o.mtime for o in objs}

        def depth(o: paths.ObjectEntry) -> int:
            i = info[(o.ns_hex, o.key_hex)]
            return i[1] if isinstance(i, tuple) else 0

        for o in sorted(objs, key=depth, reverse=True):  # deepest first: push ages up the chain
            i = info[(o.ns_hex, o.key_hex)]
            if isinstance(i, tuple) and i[1] > 0:
                p = (o.ns_hex, i[0])
                if p in recent:
                    recent[p] = max(recent[p], recent[(o.ns_hex, o.key_hex)])
        return sorted(objs, key=lambda o: (recent[(o.ns_hex, o.key_hex)], -depth(o)))

    def _chunk_index(self, o: paths.ObjectEntry) -> int:
        info = self._parent_of(o)
        return info[1] if isinstance(info, tuple) else 0

    def _parent_of(self, o: paths.ObjectEntry) -> Any:
        """(parent hex, chunk index); None for an invalid header; _UNREADABLE on a read error."""
        k = (o.ns_hex, o.key_hex, o.ino)
        hit = self._parents.get(k)
        if hit is not None:
            return hit
        try:
            fd = check.open_object(self.rootfd, o.ns_hex, o.key_hex)
            try:
                h = check.read_header(fd, key=bytes.fromhex(o.key_hex), ns=bytes.fromhex(o.ns_hex))
            finally:
                os.close(fd)
        except ObjectFormatError as e:
            # Another format version shares the root (its own namespace): not ours to judge.
            return _UNREADABLE if str(e).startswith("unsupported format version") else None
        except OSError as e:
            if e.errno not in check.VANISHED_ERRNOS:
                logger.debug("janitor: cannot read %s: %s", o.key_hex, e)
            return _UNREADABLE
        info = (h.parent.hex(), h.chunk_index)
        self._parents[k] = info
        return info

    def _remove(self, o: paths.ObjectEntry) -> str:
        """"removed", "gone" (someone else removed it), "replaced" (published again since the
        scan: a new inode, left alone) or "error"."""
        r, _ = check.remove_if_same(self.rootfd, paths.object_path(o.ns_hex, o.key_hex), o.ino)
        if r != "removed":
            return "error" if r == "kept" else r
        if self.on_evict is not None:
            self.on_evict(o.ns_hex, o.key_hex)
        return "removed"


def _open_dir_if_present(dirfd: int, rel: str) -> int:
    """A descriptor of directory ``rel``, or -1 when it is absent or not ours to open."""
    try:
        return paths.open_dir(dirfd, rel)
    except OSError:
        return -1


_UNREADABLE = object()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["HOST_TAG", "Janitor", "JanitorReport", "Usage"]
