# SPDX-License-Identifier: Apache-2.0
"""Exceptions raised by yrcache.

OS failures are plain ``OSError`` subclasses chosen by errno (``FileNotFoundError``,
``PermissionError``, ``OSError(errno.ENOSPC)``...), raised by ``Future.result()`` or by the call that
failed synchronously. Bad arguments raise ``ValueError``/``TypeError``.
"""
from __future__ import annotations

from ._native import _C

#: Using an engine after ``close()``.
ClosedError = _C.ClosedError
#: A backend named explicitly (``backend="uring"``) cannot run here; the message says why.
BackendUnavailableError = _C.BackendUnavailableError


class CudaUnavailableError(RuntimeError):
    """A CUDA operation was requested but no usable CUDA device/driver is present."""


__all__ = ["BackendUnavailableError", "ClosedError", "CudaUnavailableError"]
