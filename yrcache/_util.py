# SPDX-License-Identifier: Apache-2.0
"""Small pieces every layer needs once: log-once, and closing live objects at interpreter exit."""
from __future__ import annotations

import atexit
import logging
import threading
import weakref
from collections.abc import Hashable
from typing import Any, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LogOnce:
    """Logs a warning once per (kind, what): a fault that repeats on every request (a full root,
    an errno) is one line, not a flood. Remembers at most ``limit`` keys (then starts afresh)."""

    def __init__(self, logger: logging.Logger, limit: int = 10_000) -> None:
        self._logger, self._limit = logger, limit
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, kind: str, what: str, fmt: str, *args: Any,
                 level: int = logging.WARNING) -> bool:
        with self._lock:
            if (kind, what) in self._seen:
                return False
            if len(self._seen) >= self._limit:
                self._seen.clear()
            self._seen.add((kind, what))
        self._logger.log(level, fmt, *args)
        return True


class _Closeable(Protocol):
    def close(self) -> Any: ...


_live: dict[int, weakref.WeakSet[Any]] = {}
_live_lock = threading.Lock()


def close_at_exit(obj: _Closeable, *, tier: int) -> None:
    """Close ``obj`` at interpreter exit if it is still alive then. Lower tiers close first (a
    Cache drains its stores before the I/O engines under it close). Runs before
    concurrent.futures' own exit hook, which joins worker threads without a bound, so each
    close()'s own time limit holds at exit too."""
    with _live_lock:
        _live.setdefault(tier, weakref.WeakSet()).add(obj)


def forget_at_exit(obj: _Closeable) -> None:
    with _live_lock:
        for s in _live.values():
            s.discard(obj)


def _close_all() -> None:
    with _live_lock:
        tiers = [list(_live[t]) for t in sorted(_live)]
    for objs in tiers:
        for obj in objs:
            try:
                obj.close()
            except Exception as e:  # noqa: BLE001 - exiting anyway: say so, go on
                logging.getLogger("yrcache").warning("yrcache: closing %r at exit failed: %s",
                                                     obj, e)


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_all)
else:  # pragma: no cover - interpreters without the hook
    atexit.register(_close_all)
