# SPDX-License-Identifier: Apache-2.0
"""Exceptions raised by yrcache.

OS failures are plain ``OSError`` subclasses chosen by errno (``FileNotFoundError``,
``PermissionError``, ``OSError(errno.ENOSPC)``...), raised by ``Future.result()`` or by the call
that failed synchronously. Bad arguments raise ``ValueError``/``TypeError``.
"""
from __future__ import annotations

from ._native import _C

#: Using an engine after ``close()``.
ClosedError = _C.ClosedError
#: A backend named explicitly (``backend="uring"``) cannot run here; the message says why.
BackendUnavailableError = _C.BackendUnavailableError
#: A CUDA operation was requested but CUDA cannot run here (not compiled in, no driver, no
#: device); the message says which.
CudaUnavailableError = _C.CudaUnavailableError
#: A CUDA runtime call failed. The message starts with the CUDA error's name, also in ``.name``
#: (``cudaErrorInvalidValue``...).
CudaError = _C.CudaError

__all__ = ["BackendUnavailableError", "ClosedError", "CudaError", "CudaUnavailableError"]
