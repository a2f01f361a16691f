# SPDX-License-Identifier: Apache-2.0
"""What one Store's facade (:mod:`.store`), loads (:mod:`.reader`) and puts (:mod:`.writer`)
share: the lock and what it guards (counters, errors by errno, the in-process index, the touch
times, the forget generation), the log-once, the root's directory descriptors, the namespace's
identity and MAC key, the lookup stat batch and the janitor's wake-up. The Store owns one and
hands it to its Reader and Writer."""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .._util import LogOnce
from . import paths

COUNTERS = ("objects_stored", "bytes_stored", "dedup_skips", "dropped_full", "store_errors",
            "dropped_read_only", "hits", "misses", "corrupt", "incomplete", "bytes_read",
            "open_handle_hits", "lookups", "lookup_keys", "lookup_rounds", "lookup_stats",
            "evictions", "orphans_removed", "tmp_reclaimed", "touches")


def _keep_nothing_open(key: bytes) -> None:
    pass


class StoreState:
    """One Store's shared state. Methods named ``*_locked`` expect :attr:`lock` held; the others
    take it themselves.

    Settings: ``root``, ``ns`` (the namespace digest), ``ns_hex``, ``mac`` (the MAC key or None),
    ``durable``, ``capacity_bytes``, ``index_ttl``, ``touch_interval``.
    Descriptors (opened by the Store): ``rootfd``, ``nsfd`` (None while a load-only store finds
    no namespace directory: use :meth:`ns_dir`), ``tmpfd`` (-1 when load-only); ``fds`` holds every
    descriptor to close. ``ro_reason`` says why the store is load-only ("" when it is not).
    ``retire_handle(key)`` (set by the Store to its Reader's) stops keeping an object open; it is
    called with the lock held whenever a key's name may no longer hold what was verified.
    """

    def __init__(self, root: str, ns: bytes, *, mac_key: bytes | None, durable: bool,
                 capacity_bytes: int | None, index_ttl: float, touch_interval: float,
                 logger: logging.Logger) -> None:
        self.root = root
        self.ns = ns
        self.ns_hex = ns.hex()
        self.mac = mac_key
        self.durable = durable
        self.capacity_bytes = capacity_bytes
        self.index_ttl = index_ttl
        self.touch_interval = touch_interval
        self.lock = threading.Lock()
        self.log_once = LogOnce(logger)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.errors: dict[int, int] = defaultdict(int)
        self.fds: list[int] = []
        self.rootfd = -1
        self.nsfd: int | None = None
        self.tmpfd = -1
        self.ns_probed = 0.0
        self.ro_reason = ""
        # key -> when it was last known to exist, oldest first; entries past index_ttl are
        # dropped, so it holds what this process recently saw, not every key it ever met
        self.index: OrderedDict[bytes, float] = OrderedDict()
        self.index_max = 1 << 18
        # key -> when this process last refreshed its mtime (same order and pruning)
        self.touched: OrderedDict[bytes, float] = OrderedDict()
        self.forgets = 0   # bumped by every forget(): opens that raced one are not kept open
        self.retire_handle: Callable[[bytes], None] = _keep_nothing_open
        self.stat_batch: Any = None   # the lookup path's _C.store.StatBatch (set by the Store)
        self.janitor_wake = threading.Event()
        self.closed = False

    @property
    def read_only(self) -> bool:
        return bool(self.ro_reason)

    # -- counters -------------------------------------------------------------------------------
    def bump(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def count_error(self, err: int, where: str) -> None:
        with self.lock:
            self.errors[err] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters, and ``errors_by_errno`` (errno names), read at one moment."""
        with self.lock:
            d: dict[str, Any] = dict(self.counters)
            d["errors_by_errno"] = {errno.errorcode.get(k, str(k)): v
                                    for k, v in self.errors.items()}
        return d

    # -- descriptors ----------------------------------------------------------------------------
    def keep_fd(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close_fds(self, keep: int = 0) -> None:
        """Close every kept descriptor after the first ``keep`` (all by default)."""
        for fd in self.fds[keep:]:
            try:
                os.close(fd)
            except OSError:
                pass
        del self.fds[keep:]

    def ns_dir(self) -> int | None:
        """The namespace directory's descriptor; None while a load-only store finds none (it is
        looked for again at most once a second: another node may publish into it later)."""
        fd = self.nsfd
        if fd is not None or not self.read_only:
            return fd
        now = time.monotonic()
        if now - self.ns_probed < 1.0:
            return None
        self.ns_probed = now
        try:
            fd = paths.open_dir(self.rootfd, self.ns_hex)
        except OSError:
            return None
        with self.lock:
            if self.nsfd is None and not self.closed:
                self.nsfd = self.keep_fd(fd)
                return fd
        os.close(fd)
        return self.nsfd

    # -- the in-process index -------------------------------------------------------------------
    def exists(self, key: bytes) -> bool:
        """Whether ``key`` is known to exist: the index, else one fstatat."""
        now = time.monotonic()
        with self.lock:
            t = self.index.get(key)
            if t is not None and now - t <= self.index_ttl:
                return True
        nsfd = self.ns_dir()
        if nsfd is None:
            return False
        r = self.stat_batch.run_keys(nsfd, bytes(key), False)[0]
        if r >= 0:
            with self.lock:
                self.index_add_locked(key, now)
            return True
        return False

    def indexed_prefix(self, keys: Sequence[bytes], now: float) -> int:
        """How many leading ``keys`` the index knows to exist at ``now``."""
        n = 0
        with self.lock:
            for k in keys:
                t = self.index.get(k)
                if t is None or now - t > self.index_ttl:
                    break
                n += 1
        return n

    def index_found(self, keys: Sequence[bytes], now: float) -> None:
        """Record ``keys`` as seen at ``now`` (a lookup found them)."""
        with self.lock:
            for k in keys:
                self.index.pop(k, None)  # re-inserted at the young end
            self.index.update(dict.fromkeys(keys, now))
            self.trim_index_locked(now)

    def index_add_locked(self, key: bytes, t: float) -> None:
        self.index.pop(key, None)
        self.index[key] = t
        self.trim_index_locked(t)

    def trim_index_locked(self, now: float) -> None:
        trim_aged(self.index, now, self.index_ttl, self.index_max)

    def touch_due(self, keys: Sequence[bytes], now: float) -> list[bytes]:
        """Which of ``keys`` are due an mtime refresh (none within touch_interval), now marked
        refreshed at ``now``."""
        with self.lock:
            due = [k for k in keys if now - self.touched.get(k, -1e18) > self.touch_interval]
            for k in due:
                self.touched.pop(k, None)  # re-inserted at the young end
                self.touched[k] = now
            trim_aged(self.touched, now, self.touch_interval, self.index_max)
        return due

    def note_published(self, key: bytes, nbytes: int) -> None:
        """Bookkeeping of a put: the name now holds the new inode, so a descriptor kept open on
        an object it replaced (dedup=False re-stores a chunk whose load failed) is retired and
        later loads read this one. Not forget(): that would also stop every load in flight from
        keeping its handle, and a read racing this put adopts only an object it verified (same
        key, same bytes), so it needs no such guard."""
        with self.lock:
            self.retire_handle(key)
            self.counters["objects_stored"] += 1
            self.counters["bytes_stored"] += nbytes
            now = time.monotonic()
            self.index_add_locked(key, now)
            self.touched[key] = now  # fresh mtime: no touch needed for touch_interval
            trim_aged(self.touched, now, self.touch_interval, self.index_max)

    def forget(self, key: bytes) -> None:
        """``key``'s object is gone or bad: drop what this process knows of it, and advance the
        forget generation (loads that raced this keep nothing open and index nothing)."""
        with self.lock:
            self.forgets += 1
            self.index.pop(key, None)
            self.touched.pop(key, None)
            self.retire_handle(key)


def trim_aged(d: OrderedDict[bytes, float], now: float, max_age: float, max_len: int) -> None:
    """Drop the oldest entries of a key -> time dict kept oldest first: those older than
    ``max_age`` (they answer nothing any more), and any beyond ``max_len``."""
    while d:
        k, t = next(iter(d.items()))
        if len(d) <= max_len and now - t <= max_age:
            return
        d.popitem(last=False)


__all__ = ["COUNTERS", "StoreState", "trim_aged"]
