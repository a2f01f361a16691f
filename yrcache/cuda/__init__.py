# SPDX-License-Identifier: Apache-2.0
"""The GPU data path (csrc/cuda): the copy engine's gather/scatter on device streams
(:mod:`.copy`) and GPUDirect Storage with its bounce ladder (:mod:`.gds`)."""
from .copy import (
                   METHODS,
                   CudaError,
                   CudaUnavailableError,
                   available,
                   copier,
                   device_of,
                   gather_dense,
                   gather_paged,
                   pin,
                   require,
                   scatter_dense,
                   scatter_paged,
                   status,
                   stream_handle,
)

__all__ = ["METHODS", "CudaError", "CudaUnavailableError", "available", "copier", "device_of",
           "gather_dense", "gather_paged", "pin", "require", "scatter_dense", "scatter_paged",
           "status", "stream_handle"]
