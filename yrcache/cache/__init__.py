# SPDX-License-Identifier: Apache-2.0
"""The Cache API for serving loops: KV layouts (:mod:`.layout`), the CPU gather/scatter
(:mod:`.copy`) and the Cache (:mod:`.cache`), a facade over its parts: the staging slabs and the
chunks staged for a store (:mod:`.staging`), the store writer (:mod:`.writer`), the load pipeline
(:mod:`.loader`), the host tier (:mod:`.tier`), the chunk copies on CPU or GPU
(:mod:`.transfer`) and the metrics (:mod:`.metrics`)."""
from .cache import Cache, LoadFuture, LoadResult, StoreFuture, StoreResult, StoreWriter
from .layout import KVLayout

__all__ = ["Cache", "KVLayout", "LoadFuture", "LoadResult", "StoreFuture", "StoreResult",
           "StoreWriter"]
