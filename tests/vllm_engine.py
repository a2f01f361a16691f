# SPDX-License-Identifier: Apache-2.0
"""One real vLLM engine (CPU backend) in its own process, driven by JSON lines on stdin; answers
are JSON lines on stdout, vLLM's own output goes to stderr. Used by tests/vllm_util.py only.

argv[1]: {"engine": LLM kwargs, "connector": extra_config dict or null}
"""
from __future__ import annotations

import json
import os
import sys
import time


def main() -> int:
    spec = json.loads(sys.argv[1])
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # anything vLLM prints goes to stderr
    from vllm import LLM, SamplingParams

    kw = dict(spec["engine"])
    if spec.get("connector") is not None:
        kw["kv_transfer_config"] = {"kv_connector": "YRCacheConnector",
                                    "kv_connector_module_path": "yrcache.integrations.vllm",
                                    "kv_role": "kv_both",
                                    "kv_connector_extra_config": spec["connector"]}
    llm = LLM(**kw)

    def worker():
        from vllm.distributed.kv_transfer import get_kv_transfer_group
        return get_kv_transfer_group()._worker

    def scheduler():
        return llm.llm_engine.engine_core.engine_core.scheduler.connector._sched

    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        r: dict = {}
        if op == "generate":
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
            r["seconds"] = time.perf_counter() - t0
            r["results"] = [{
                "tokens": list(o.outputs[0].token_ids),
                "logprobs": [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids,
                                                             o.outputs[0].logprobs)],
                "cached": o.num_cached_tokens} for o in outs]
        elif op == "reset":
            r["ok"] = bool(llm.reset_prefix_cache())
        elif op == "drain":      # wait for this engine's stores to be published
            w = worker()
            deadline = time.monotonic() + cmd.get("timeout", 60)
            while w.cache is not None and w.cache.stats()["operations_in_flight"] and \
                    time.monotonic() < deadline:
                time.sleep(0.005)
            r["in_flight"] = w.cache.stats()["operations_in_flight"] if w.cache else 0
        elif op == "stats":
            w = worker()
            r["cache"] = w.cache.stats() if w.cache is not None else None
            r["disabled"] = w.disabled
            s = scheduler()
            r["policy"] = llm.llm_engine.vllm_config.kv_transfer_config.kv_load_failure_policy
            r["scheduler_disabled"] = s.disabled if s is not None else "no scheduler side"
        elif op == "faults":     # test hook: I/O errors in the worker's engine (csrc/io/faults.h)
            worker()._engine._inject_faults(cmd["spec"])
            r["ok"] = True
        elif op == "exit":
            out.write(json.dumps({"ok": True}) + "\n")
            break
        out.write(json.dumps(r, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
