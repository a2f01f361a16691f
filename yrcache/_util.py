# SPDX-License-Identifier: Apache-2.0
"""Small pieces every layer needs once: log-once, and closing live objects at interpreter exit."""
from __future__ import annotations

# threading's exit hooks run in reverse order of registration: importing concurrent.futures here
# registers its hook (which joins pool workers without a bound) before ours, so EARLY objects are
# closed before it runs and each close()'s own time limit holds at exit too.
import atexit
import concurrent.futures.thread  # noqa: F401
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol


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


_live: dict[int, weakref.WeakSet[Any]] = {0: weakref.WeakSet(), 1: weakref.WeakSet()}
_live_lock = threading.Lock()

#: closed before the interpreter joins worker threads: objects whose close() drains their own
#: work within a time limit (a Cache: its in-flight stores, at most its close timeout)
EARLY = 0
#: closed by plain atexit, after every worker thread was joined: objects that queued work of
#: others may still use until then (an IoEngine under a Store's pools)
LATE = 1


def close_at_exit(obj: _Closeable, *, tier: int) -> None:
    """Close ``obj`` at interpreter exit if it is still alive then, at ``tier`` EARLY or LATE."""
    with _live_lock:
        _live[tier].add(obj)


def forget_at_exit(obj: _Closeable) -> None:
    with _live_lock:
        for s in _live.values():
            s.discard(obj)


def _close_tier(tier: int) -> None:
    with _live_lock:
        objs = list(_live[tier])
    for obj in objs:
        try:
            obj.close()
        except Exception as e:  # noqa: BLE001 - exiting anyway: say so, go on
            logging.getLogger("yrcache").warning("yrcache: closing %r at exit failed: %s", obj, e)


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_close_tier, EARLY)
else:  # pragma: no cover - interpreters without the hook
    atexit.register(_close_tier, EARLY)
atexit.register(_close_tier, LATE)


def prestart(pool: ThreadPoolExecutor) -> None:
    """Start every worker thread of ``pool`` now (a ThreadPoolExecutor starts them one submit
    at a time), so that no request pays for a thread start."""
    n = pool._max_workers
    barrier = threading.Barrier(n + 1)
    for _ in range(n):
        pool.submit(barrier.wait, 30.0)
    barrier.wait(30.0)



