# SPDX-License-Identifier: Apache-2.0
"""yrcache as a vLLM KV connector (``kv_connector_module_path="yrcache.integrations.vllm"``).

``YRCacheConnector`` imports vLLM (and needs it); the rest of yrcache never does. The worker side
(``worker.WorkerSide``) also imports without vLLM, so its hooks can be driven directly.
"""
from __future__ import annotations

from typing import Any

from .config import ConnectorConfig


def __getattr__(name: str) -> Any:
    if name == "YRCacheConnector":   # what vLLM looks up by name in this module
        from .connector import YRCacheConnector
        return YRCacheConnector
    raise AttributeError(name)


__all__ = ["ConnectorConfig", "YRCacheConnector"]
