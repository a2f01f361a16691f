# SPDX-License-Identifier: Apache-2.0
"""One real vLLM engine in its own process, driven by JSON lines on stdin; answers are JSON lines
on stdout, vLLM's own output goes to stderr. The connector tests and the serving benchmark run
each engine this way (a second engine does not start cleanly in one process).

    python -m yrcache.bench.vllm.engine '{"engine": {LLM kwargs}, "connector": {extra} or null}'

Commands: generate, queue (requests added one by one and stepped, some aborted on the way),
reset (vLLM's own prefix cache), drain (wait for this engine's stores), stats, cpu (yrcache's CPU
seconds so far), faults (test hook), exit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PKG_ROOT = Path(__file__).resolve().parents[3]


def yrcache_cpu_seconds(w) -> float:
    """CPU time spent by yrcache in this process: its hooks on the model thread, its own threads
    (named yrcache-*) and the io_uring workers (only yrcache uses io_uring here)."""
    import threading
    ids = {t.native_id for t in threading.enumerate() if t.name.startswith("yrcache")}
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            if int(tid) in ids or comm.startswith("iou-wrk"):
                fields = stat[stat.rindex(")") + 2:].split()
                total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError):
            continue
    return total + (w.hook_cpu_s if w is not None else 0.0)


def _log_to_stderr() -> None:
    """yrcache's own log lines (loads that fail, stores dropped) in the engine's log."""
    import logging
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("yrcache").addHandler(h)
    logging.getLogger("yrcache").setLevel(logging.INFO)


def _start(spec: dict[str, Any]) -> Any:
    from vllm import LLM
    kw = dict(spec["engine"])
    if spec.get("connector") is not None:
        kw["kv_transfer_config"] = {"kv_connector": "YRCacheConnector",
                                    "kv_connector_module_path": "yrcache.integrations.vllm",
                                    "kv_role": spec.get("role") or "kv_both",
                                    "kv_connector_extra_config": spec["connector"]}
    return LLM(**kw)


def _worker() -> Any:
    from vllm.distributed.kv_transfer import get_kv_transfer_group
    return get_kv_transfer_group().worker_side


def _scheduler(llm: Any) -> Any:
    return llm.llm_engine.engine_core.engine_core.scheduler.connector.scheduler_side


def _generate(llm: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    from vllm import SamplingParams
    sp = SamplingParams(max_tokens=cmd.get("max_tokens", 8), temperature=0.0,
                        logprobs=cmd.get("logprobs", 1), detokenize=False)
    prompts = []
    for p in cmd["prompts"]:
        d = {"prompt_token_ids": p["ids"]}
        if p.get("salt"):
            d["cache_salt"] = p["salt"]
        prompts.append(d)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    r: dict[str, Any] = {"seconds": time.perf_counter() - t0}
    r["results"] = [_output(o) for o in outs]
    return r


def _output(o: Any) -> dict[str, Any]:
    return {"ttft": o.metrics.first_token_latency if o.metrics is not None else None,
            "preemptions": o.metrics.num_preemptions if o.metrics is not None else None,
            "tokens": list(o.outputs[0].token_ids),
            "logprobs": [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids,
                                                         o.outputs[0].logprobs)],
            "cached": o.num_cached_tokens}


def _queue(llm: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    """Add every prompt at once (each with its own max_tokens), step the engine until all are
    done, aborting ``abort`` (prompt indices) after ``abort_after`` steps. Results in prompt
    order; None for an aborted prompt."""
    from vllm import SamplingParams
    eng = llm.llm_engine
    tag = cmd.get("tag", "q")
    rids = [f"{tag}-{i}" for i in range(len(cmd["prompts"]))]
    for rid, p in zip(rids, cmd["prompts"]):
        sp = SamplingParams(max_tokens=p.get("max_tokens", 8), temperature=0.0, logprobs=1,
                            detokenize=False)
        eng.add_request(rid, {"prompt_token_ids": p["ids"]}, sp)
    done: dict[str, Any] = {}
    steps, t0 = 0, time.perf_counter()
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o
        steps += 1
        if steps == cmd.get("abort_after", -1):
            eng.abort_request([rids[i] for i in cmd.get("abort", [])])
    return {"seconds": time.perf_counter() - t0, "steps": steps,
            "results": [_output(done[r]) if r in done and done[r].outputs[0].finish_reason
                        not in (None, "abort") else None for r in rids]}


def _step_out(llm: Any, deadline: float) -> None:
    """Step the engine core until no finished request holds blocks (tails being stored)."""
    core = llm.llm_engine.engine_core.engine_core
    while core.scheduler.has_requests() and time.monotonic() < deadline:
        llm.llm_engine.step()


def _reset(llm: Any) -> dict[str, Any]:
    """vLLM's own prefix cache emptied (it refuses while a finished request holds blocks)."""
    _step_out(llm, time.monotonic() + 60)
    return {"ok": bool(llm.reset_prefix_cache())}


def _drain(llm: Any, cmd: dict[str, Any]) -> dict[str, Any]:
    """Wait for this engine's stores to be published. Finished requests whose tails are still to
    be stored keep the engine core stepping (as `vllm serve`'s busy loop does on its own; the
    LLM class steps only while it has requests)."""
    deadline = time.monotonic() + cmd.get("timeout", 60)
    _step_out(llm, deadline)
    w = _worker()

    def in_flight() -> int:
        return sum(c.stats()["operations_in_flight"] for c in (w.cache, w.tail_cache)
                   if c is not None)
    while in_flight() and time.monotonic() < deadline:
        time.sleep(0.005)
    return {"in_flight": in_flight()}


def _stats(llm: Any) -> dict[str, Any]:
    w = _worker()
    r: dict[str, Any] = {"cache": w.cache.stats() if w.cache is not None else None,
                         "tail_cache": w.tail_cache.stats() if w.tail_cache is not None else None,
                         "disabled": w.disabled}
    s = _scheduler(llm)
    r["policy"] = llm.llm_engine.vllm_config.kv_transfer_config.kv_load_failure_policy
    r["scheduler_disabled"] = s.disabled if s is not None else "no scheduler side"
    if s is not None:
        r["scheduler"] = dict(s.totals)
        r["planner"] = s.planner.snapshot()
    return r


def _faults(cmd: dict[str, Any]) -> dict[str, Any]:
    """Test hook: I/O errors in the worker's engine (csrc/io/faults.h)."""
    _worker()._engine._inject_faults(cmd["spec"])
    return {"ok": True}


def _work(cmd: dict[str, Any]) -> dict[str, Any]:
    """One-time work done so far: yrcache's threads and its arenas (issue 15: the first request
    must not start or allocate any)."""
    import threading

    from yrcache.io.buffers import arenas_allocated
    threads = sorted(f"{t.name}:{t.native_id}" for t in threading.enumerate()
                     if t.name.startswith("yrcache"))
    return {"threads": threads, "arenas": arenas_allocated()}


def main() -> int:
    spec = json.loads(sys.argv[1])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything vLLM prints goes to stderr
    _log_to_stderr()
    llm = _start(spec)
    ops = {"generate": lambda cmd: _generate(llm, cmd),
           "queue": lambda cmd: _queue(llm, cmd),
           "reset": lambda cmd: _reset(llm),
           "drain": lambda cmd: _drain(llm, cmd),
           "stats": lambda cmd: _stats(llm),
           "cpu": lambda cmd: {"cpu_s": yrcache_cpu_seconds(_worker()),
                               "load_wait_s": getattr(_worker(), "load_wait_s", 0.0)},
           "faults": _faults,
           "work": _work}
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "exit":
            out.write(json.dumps({"ok": True}) + "\n")
            break
        handler = ops.get(cmd["op"])
        r = handler(cmd) if handler is not None else {}
        out.write(json.dumps(r, default=str) + "\n")
    return 0


# -- the parent side -----------------------------------------------------------------------------
def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",   # one process: 2-3 s start, hooks inspectable
        "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TORCHDYNAMO_DISABLE": "1",               # else the first logprobs request compiles ~20 s
        "PYTHONPATH": os.pathsep.join([str(PKG_ROOT), env.get("PYTHONPATH", "")]),
    })
    env.update(extra)
    return env


class Engine:
    """A vLLM engine process. ``connector``: the yrcache extra config (None: plain vLLM)."""

    def __init__(self, model: str | Path, connector: dict[str, Any] | None, *,
                 log: Path, env: dict[str, str] | None = None, role: str = "kv_both",
                 **engine: Any) -> None:
        from yrcache.bench.vllm import model as vllm_model
        spec = {"engine": vllm_model.engine_args(model, **engine), "connector": connector,
                "role": role}
        self.log = log
        self._err = open(log, "ab")
        self.p = subprocess.Popen([sys.executable, "-m", "yrcache.bench.vllm.engine",
                                   json.dumps(spec)],
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


if __name__ == "__main__":
    sys.exit(main())
