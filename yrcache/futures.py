# SPDX-License-Identifier: Apache-2.0
"""Futures for yrcache's asynchronous operations, in the style of ``concurrent.futures``.

A :class:`Future` is either backed by a native completion (I/O engine requests) or completed from
Python (composite operations). ``result()`` blocks with the GIL released. Callbacks never run on a
C++ worker thread: an engine's dispatcher thread (or the thread that completed a Python-driven
future) runs them. ``await fut`` works in asyncio.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as _cf
import errno as _errno
import math
import numbers
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")

FIRST_COMPLETED = _cf.FIRST_COMPLETED
FIRST_EXCEPTION = _cf.FIRST_EXCEPTION
ALL_COMPLETED = _cf.ALL_COMPLETED
CancelledError = _cf.CancelledError

_PENDING, _DONE = 0, 1


def _timeout_arg(timeout: Any) -> float | None:
    """A wait limit in seconds: None, +inf or more than any lock can wait (threading.TIMEOUT_MAX)
    wait for ever; a negative one only polls (as in concurrent.futures); NaN and non-numbers are
    refused."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, got "
                        f"{type(timeout).__name__}")
    t = float(timeout)
    if math.isnan(t):
        raise ValueError("timeout must be a number of seconds or None, got nan")
    return None if t > threading.TIMEOUT_MAX else max(t, 0.0)


class Future(Generic[T]):
    """The eventual result of an asynchronous yrcache operation.

    Thread-safe. The objects an operation uses (buffers, files) are kept alive until it completes,
    and no longer: a finished Future (and an exception's traceback holding it) keeps none of them.
    """

    __slots__ = ("_c", "_convert", "_what", "_path", "_keep", "_lock", "_cond", "_callbacks",
                 "_notified", "_state", "_result", "_exc", "__weakref__")

    def __init__(self, completion: Any = None, *, convert: Callable[[int], T] | None = None,
                 what: str = "", path: str | None = None, keep: Any = None) -> None:
        self._c = completion
        self._convert = convert
        self._what = what
        self._path = path
        self._keep = keep
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None if completion is not None else \
            threading.Condition(self._lock)
        self._callbacks: list[Callable[[Future[T]], Any]] = []
        self._notified = False  # callbacks have been (or are being) run
        self._state = _PENDING
        self._result: Any = None
        self._exc: BaseException | None = None

    # -- state -------------------------------------------------------------------------------
    def done(self) -> bool:
        """True when the operation finished (successfully, with an error, or cancelled)."""
        if self._state == _DONE:
            return True
        c = self._c
        return c is not None and c.done()

    def cancelled(self) -> bool:
        return self.done() and isinstance(self._outcome_exc(), CancelledError)

    def cancel(self) -> bool:
        """Cancel if no part of the operation has started yet; True if it was cancelled."""
        if self._c is not None:
            return bool(self._c.cancel())
        with self._lock:
            if self._state == _DONE:
                return False
        self._finish(exc=CancelledError())
        return True

    def result(self, timeout: float | None = None) -> T:
        """Wait up to ``timeout`` seconds; return the result or raise the operation's exception.

        Raises ``TimeoutError`` when the wait times out (the operation continues).
        """
        self._wait(timeout)
        exc = self._outcome_exc()
        if exc is not None:
            raise exc
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._outcome_exc()

    def add_done_callback(self, fn: Callable[[Future[T]], Any]) -> None:
        """Call ``fn(future)`` once done, on a Python thread (never a C++ worker thread).

        If the future is already done, ``fn`` runs at once in the calling thread.
        """
        if not callable(fn):
            raise TypeError(f"callback must be callable, got {type(fn).__name__}")
        with self._lock:
            if not self._notified:
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    def __await__(self):  # type: ignore[no-untyped-def]
        if not self.done():
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()

            def wake(_: Future[T]) -> None:
                loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result(None))

            self.add_done_callback(wake)
            yield from waiter
        return self.result(0)

    # -- internals ---------------------------------------------------------------------------
    def _wait(self, timeout: Any) -> None:
        timeout = _timeout_arg(timeout)
        if self._state == _DONE:
            return
        c = self._c
        if c is not None:
            if not c.wait(-1.0 if timeout is None else timeout):
                raise TimeoutError(f"{self._what or 'operation'} not done after {timeout} s")
            self._settle_native()
            return
        assert self._cond is not None
        with self._cond:
            if not self._cond.wait_for(lambda: self._state == _DONE, timeout):
                raise TimeoutError(f"{self._what or 'operation'} not done after {timeout} s")

    def _settle_native(self) -> None:
        """Convert the native completion's code into a result or exception (idempotent)."""
        if self._state == _DONE:
            return
        code = self._c.result()
        with self._lock:
            if self._state == _DONE:
                return
            if code < 0:
                err = -code
                if err == _errno.ECANCELED:
                    self._exc = CancelledError(f"{self._what} cancelled")
                else:
                    msg = os.strerror(err) + (f" ({self._what})" if self._what else "")
                    self._exc = OSError(err, msg, self._path) if self._path else OSError(err, msg)
            else:
                self._result = self._convert(code) if self._convert else code
            self._state = _DONE
            self._keep = None  # the operation is over: its buffers may go
    def _outcome_exc(self) -> BaseException | None:
        if self._c is not None:
            self._settle_native()
        return self._exc

    def _on_native_done(self) -> None:
        """Called by the dispatcher once the native completion finished."""
        self._settle_native()
        self._keep = None
        self._run_callbacks()

    def _finish(self, result: Any = None, exc: BaseException | None = None) -> None:
        """Complete a Python-driven future; runs callbacks in the calling thread."""
        assert self._cond is not None, "native futures are completed by their engine"
        with self._cond:
            if self._state == _DONE:
                raise _cf.InvalidStateError("future already done")
            self._result, self._exc, self._state = result, exc, _DONE
            self._cond.notify_all()
        self._keep = None
        self._run_callbacks()

    def set_result(self, result: T) -> None:
        """Complete a Python-driven future (for code that composes operations)."""
        self._finish(result=result)

    def set_exception(self, exc: BaseException) -> None:
        self._finish(exc=exc)

    def _run_callbacks(self) -> None:
        with self._lock:
            self._notified = True
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            _run_callback(fn, self)

    def __repr__(self) -> str:
        state = "pending"
        if self.done():
            exc = self._outcome_exc()
            state = "cancelled" if isinstance(exc, CancelledError) else \
                f"raised {type(exc).__name__}" if exc else f"result={self._result!r}"
        return f"<yrcache.Future {self._what or 'op'} {state}>"


def _run_callback(fn: Callable[[Future[Any]], Any], fut: Future[Any]) -> None:
    try:
        fn(fut)
    except Exception:  # as concurrent.futures does: a failing callback must not kill the dispatcher
        import logging
        logging.getLogger("yrcache").exception("exception in Future callback %r", fn)


def _futures_arg(fs: Iterable[Any]) -> list[Future[Any]]:
    fs = list(fs)
    for f in fs:
        if not isinstance(f, Future):
            raise TypeError(f"expected yrcache Futures, got {type(f).__name__}")
    return fs


class DoneAndNotDone(NamedTuple):
    done: set[Future[Any]]
    not_done: set[Future[Any]]


def wait(fs: Iterable[Future[Any]], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """Wait for futures like ``concurrent.futures.wait``; returns ``(done, not_done)``."""
    fs = set(_futures_arg(fs))
    timeout = _timeout_arg(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    if return_when == ALL_COMPLETED:
        for f in fs:  # wait on each native completion directly: no dispatcher hop
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                f._wait(left)
            except TimeoutError:
                break
        done = {f for f in fs if f.done()}
        return DoneAndNotDone(done, fs - done)
    if return_when not in (FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED, "
                         f"got {return_when!r}")
    cond = threading.Condition()

    def stop_now() -> bool:
        done = [f for f in fs if f.done()]
        if return_when == FIRST_COMPLETED:
            return bool(done)
        return len(done) == len(fs) or any(f.exception(0) is not None for f in done)

    def poke(_: Future[Any]) -> None:
        with cond:
            cond.notify_all()

    for f in fs:
        f.add_done_callback(poke)
    with cond:
        cond.wait_for(stop_now, None if deadline is None else max(0.0, deadline - time.monotonic()))
    done = {f for f in fs if f.done()}
    return DoneAndNotDone(done, fs - done)


def gather(*fs: Future[Any], timeout: float | None = None,
           return_exceptions: bool = False) -> list[Any]:
    """Results of all futures, in order. Raises the first exception unless return_exceptions."""
    _futures_arg(fs)
    timeout = _timeout_arg(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    out: list[Any] = []
    for f in fs:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if return_exceptions:
            exc = f.exception(left)
            out.append(exc if exc is not None else f.result(0))
        else:
            out.append(f.result(left))
    return out


__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "CancelledError",
           "DoneAndNotDone", "Future", "gather", "wait"]
