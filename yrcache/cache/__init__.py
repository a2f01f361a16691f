# SPDX-License-Identifier: Apache-2.0
"""The Cache API for serving loops: KV layouts (:mod:`.layout`), the CPU gather/scatter
(:mod:`.copy`) and the Cache with its store and load pipelines (:mod:`.cache`)."""
from .cache import Cache, LoadFuture, LoadResult, StoreFuture, StoreResult, StoreWriter
from .layout import KVLayout

__all__ = ["Cache", "KVLayout", "LoadFuture", "LoadResult", "StoreFuture", "StoreResult",
           "StoreWriter"]
