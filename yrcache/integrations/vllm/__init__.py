# SPDX-License-Identifier: Apache-2.0
"""yrcache as a vLLM KV connector (``kv_connector_module_path="yrcache.integrations.vllm"``).

Importing this package imports vLLM; the rest of yrcache never does.
"""
from __future__ import annotations

from .config import ConnectorConfig
from .connector import YRCacheConnector

__all__ = ["ConnectorConfig", "YRCacheConnector"]
