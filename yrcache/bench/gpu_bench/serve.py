# SPDX-License-Identifier: Apache-2.0
"""Phase serve: TTFT of a random-weight Llama-3-8B shape, recompute vs sync vs async load."""
from __future__ import annotations

import collections
import functools
import shutil
import tempfile
import time
from typing import Any

import numpy as np

from ..common import format_table, num
from .harness import GB, MIB, Ctx, cuda_torch, divide, rotate, sample_summary

LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
             "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8}


def _kv_pairs(past: Any) -> list[tuple[Any, Any]]:
    """(K, V) per layer of a transformers DynamicCache (5.x: .layers; 4.x: key_cache)."""
    layers = getattr(past, "layers", None)
    if layers and hasattr(layers[0], "keys"):
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(past.key_cache, past.value_cache))


def _cache_kw(fn: Any) -> str:
    import inspect
    return "cache" if "cache" in inspect.signature(fn).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def phase_serve(c: Ctx) -> None:
    torch = cuda_torch(c.dev)
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import yrcache
    from yrcache.cache.layout import KVLayout
    dev = c.dev
    dv = f"cuda:{dev}"
    lengths = c.a.serve_tokens or ([8192] if c.quick else [8192, 32768])
    layers = c.a.serve_layers
    reps = 3
    chunk = 256
    shape = dict(LLAMA3_8B, num_hidden_layers=layers)
    c.doc["config"] = {"model": "Llama-3-8B shape, random weights (transformers "
                                f"{transformers.__version__} LlamaForCausalLM, bf16, built on "
                                "the GPU)", "shape": shape, "prompt_tokens": lengths,
                       "chunk_tokens": chunk, "reps": reps,
                       "modes": {"recompute": "prefill of the whole prompt (DynamicCache)",
                                 "sync": "Cache(mode=sync).load of the prefix (all but the last "
                                         "chunk) into a DynamicCache's tensors, then prefill of "
                                         "the last chunk",
                                 "async": "Cache(mode=async).load; a forward pre-hook on decoder "
                                          "layer i waits for layer i only"},
                       "ttft": "lookup + load + prefill until the argmax of the last prompt "
                               "token's logits is on the host (synchronized), all on one "
                               "non-default compute stream"}
    t0 = time.perf_counter()
    cfg = LlamaConfig(max_position_embeddings=max(lengths) + 1024, **shape)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(dv):
            model: Any = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    if any(t.device.type != "cuda" for t in [*model.parameters(), *model.buffers()]):
        c.note("some weights were not built on the GPU: moved with model.to()")
        model = model.to(device=dv)
    if any(p.dtype != torch.bfloat16 for p in model.parameters()):
        c.note("some weights were not bf16: converted with model.to(torch.bfloat16)")
        model = model.to(dtype=torch.bfloat16)
    model.eval()
    torch.cuda.synchronize(dev)
    c.doc["config"]["model_build_s"] = round(time.perf_counter() - t0, 2)
    c.doc["config"]["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
    c.doc["config"]["params"] = sum(p.numel() for p in model.parameters())
    c.save()
    kvh, hd = shape["num_key_value_heads"], shape["hidden_size"] // shape["num_attention_heads"]
    layout = KVLayout.dense(num_layers=layers, dtype="bfloat16", kv_heads=kvh, head_size=hd)
    ns = layout.namespace("gpu-bench-random-llama3-8b", chunk_tokens=chunk)
    obj = layout.segment_bytes(chunk) * layers
    group = 16
    staging = 2 * (group + 1) * obj + 8 * MIB     # 16 store slabs; the rest are load slabs
    root = tempfile.mkdtemp(prefix="yrcache-gpu-bench-serve-", dir=c.a.dir)
    c.doc["config"].update({"root": root, "staging_bytes_per_cache": staging,
                            "object_bytes": obj})
    caches: dict[str, Any] = {}
    hooks: list[Any] = []
    state: dict[str, Any] = {"load": None, "wait": 0.0}
    try:
        for m in ("sync", "async"):
            caches[m] = yrcache.Cache(root, ns, layout, mode=m, staging_bytes=staging,
                                      janitor_period=0)
        hooks += [layer.register_forward_pre_hook(_wait_hook(state, i))
                  for i, layer in enumerate(model.model.layers)]
        _serve_lengths(c, torch, model, caches, state, lengths, shape, chunk, reps, obj)
    finally:
        for h in hooks:
            h.remove()
        for cache in caches.values():
            cache.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_hook(state: dict[str, Any], i: int) -> Any:
    """A forward pre-hook for decoder layer i: wait for layer i of the load in flight, if any."""
    def hook(_mod: Any, _args: Any) -> None:
        lf = state["load"]
        if lf is not None:
            t = time.perf_counter()
            lf.layer(i).result()
            state["wait"] += time.perf_counter() - t
    return hook


def _serve_lengths(c: Ctx, torch: Any, model: Any, caches: dict[str, Any], state: dict[str, Any],
                   lengths: list[int], shape: dict[str, int], chunk: int, reps: int,
                   obj: int) -> None:
    from transformers import DynamicCache
    dev = c.dev
    dv = f"cuda:{dev}"
    layers = shape["num_hidden_layers"]
    kvh, hd = shape["num_key_value_heads"], shape["hidden_size"] // shape["num_attention_heads"]
    group = 16
    stream = torch.cuda.Stream(dv)   # not the legacy default stream (handle 0)
    kw = _cache_kw(type(model.model).forward)

    def forward(ids_t: Any, past: Any) -> tuple[Any, Any]:
        out = model.model(input_ids=ids_t, use_cache=True, **{kw: past})
        logits = model.lm_head(out.last_hidden_state[:, -1, :])
        return logits[0], out

    def recompute(prompt_np: np.ndarray, prompt_t: Any) -> tuple[float, Any, dict[str, Any]]:
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.cuda.stream(stream):
            logits, _ = forward(prompt_t, None)
            tok = int(torch.argmax(logits))
        dt = time.perf_counter() - t0
        return dt, logits.float(), {"token": tok}

    def loaded(mode: str, prompt_np: np.ndarray, prompt_t: Any, want: int
               ) -> tuple[float, Any, dict[str, Any]]:
        cache = caches[mode]
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.no_grad(), torch.cuda.stream(stream):
            hit = min(cache.lookup(prompt_np), (len(prompt_np) - 1) // chunk * chunk)
            if hit != want:
                raise RuntimeError(f"{mode}: lookup found {hit} tokens, {want} were stored")
            shp = (1, kvh, hit, hd)
            past = DynamicCache(ddp_cache_data=[
                (torch.empty(shp, dtype=torch.bfloat16, device=dv),
                 torch.empty(shp, dtype=torch.bfloat16, device=dv)) for _ in range(layers)])
            kv = _kv_pairs(past)   # the tensors the DynamicCache holds (it copied ours)
            state["wait"] = 0.0
            tl = time.perf_counter()
            lf = cache.load(prompt_np[:hit], kv, stream=stream)
            if mode == "sync":   # complete on return
                state["wait"] = time.perf_counter() - tl
            else:
                state["load"] = lf
            try:
                logits, _ = forward(prompt_t[:, hit:], past)
            finally:
                state["load"] = None
            r = lf.result()
            tok = int(torch.argmax(logits))
        dt = time.perf_counter() - t0
        if r.tokens != hit:
            raise RuntimeError(f"{mode}: partial load {r}")
        return dt, logits.float(), {"token": tok, "load_wait_s": state["wait"], "hit": hit}

    results: list[dict[str, Any]] = []
    c.doc["results"] = {"lengths": results}
    hl: dict[str, Any] = {}
    c.doc["headline"] = hl
    rng = np.random.default_rng(4)
    prev_cost = 0.0
    for li, prompt_len in enumerate(lengths):
        t_len = time.perf_counter()
        if li > 0:
            est = prev_cost * (prompt_len / lengths[li - 1]) ** 1.3
            if est > c.left() - 5:
                c.note(f"serve: {prompt_len} tokens skipped: ~{est:.0f} s estimated, "
                       f"{c.left():.0f} s left of --budget")
                results.append({"prompt_tokens": prompt_len, "skipped": f"~{est:.0f} s estimated, "
                                f"{c.left():.0f} s left"})
                break
        prompt_np = rng.integers(0, shape["vocab_size"], prompt_len, dtype=np.int64)
        prompt_t = torch.from_numpy(prompt_np).to(dv).unsqueeze(0)
        hit = (prompt_len - 1) // chunk * chunk
        row: dict[str, Any] = {"prompt_tokens": prompt_len, "hit_tokens": hit,
                               "prefill_tokens_after_load": prompt_len - hit}
        results.append(row)
        # the prefix's KV: one full prefill (also the warm-up), stored through the sync cache
        ts = time.perf_counter()
        with torch.no_grad(), torch.cuda.stream(stream):
            _, out = forward(prompt_t, None)
        stream.synchronize()
        row["setup_prefill_s"] = round(time.perf_counter() - ts, 3)
        kv = _kv_pairs(_cache_of(out))
        ts = time.perf_counter()
        nch = hit // chunk
        for end in [*range(group, nch, group), nch]:
            r = caches["sync"].store(prompt_np[:end * chunk], kv, stream=stream).result()
            if r.failed or r.dropped:
                raise RuntimeError(f"setup store of {end} chunks: {r}")
        row["setup_store_s"] = round(time.perf_counter() - ts, 3)
        row["setup_store_gbps"] = nch * obj / (time.perf_counter() - ts) / GB
        del out, kv
        torch.cuda.empty_cache()
        runs = {"recompute": functools.partial(recompute, prompt_np, prompt_t),
                "sync": functools.partial(loaded, "sync", prompt_np, prompt_t, hit),
                "async": functools.partial(loaded, "async", prompt_np, prompt_t, hit)}
        warm = 0.0
        if li == 0:   # warm-up every mode once (allocator, pinning, threads)
            tw = time.perf_counter()
            for fn in runs.values():
                fn()
            warm = time.perf_counter() - tw
            row["warmup_s"] = round(warm, 3)
        ttft: dict[str, list[float]] = collections.defaultdict(list)
        extra: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        first_logits: dict[str, Any] = {}
        for rep in range(reps):
            for m in rotate(list(runs), rep):
                dt, logits, ex = runs[m]()
                ttft[m].append(dt)
                extra[m].append(ex)
                first_logits.setdefault(m, logits)
        for m in runs:
            row[m] = sample_summary(ttft[m])
        ref = first_logits["recompute"]
        for m in ("sync", "async"):
            row[f"ratio_{m}"] = divide(row[m]["median"], row["recompute"]["median"])
            row[f"{m}_load_wait_s"] = sample_summary([e["load_wait_s"] for e in extra[m]])
            d = (first_logits[m] - ref).norm() / ref.norm().clamp_min(1e-30)
            row[f"{m}_logits_rel_err_vs_recompute"] = float(d)
            row[f"{m}_argmax_agrees"] = extra[m][0]["token"] == extra["recompute"][0]["token"]
        k = f"{prompt_len // 1024}K"
        for m in runs:
            hl[f"ttft_{k}_{m}_ms"] = round(row[m]["median"] * 1e3, 1)
        for m in ("sync", "async"):
            hl[f"ratio_{k}_{m}"] = round(row[f"ratio_{m}"], 3)
        row["section_s"] = round(time.perf_counter() - t_len, 2)
        prev_cost = time.perf_counter() - t_len - warm   # setup + timed runs
        for key in caches["sync"].keys(prompt_np[:hit]):
            caches["sync"].store_.delete(key)
        c.save()


def table_serve(doc: dict[str, Any]) -> str:
    cols = [("tokens", ">7"), ("recompute ms", ">14"), ("sync ms", ">10"), ("ratio", ">7"),
            ("async ms", ">10"), ("ratio", ">7"), ("async wait ms", ">15")]
    rows: list[list[Any]] = []
    for r in doc.get("results", {}).get("lengths", []):
        if "skipped" in r or "recompute" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else "incomplete"
            rows.append([r["prompt_tokens"], f"  {why}"])
            continue
        rows.append([r["prompt_tokens"], num(r["recompute"]["median"] * 1e3, ".1f"),
                     num(r["sync"]["median"] * 1e3, ".1f"), num(r["ratio_sync"], ".3f"),
                     num(r["async"]["median"] * 1e3, ".1f"), num(r["ratio_async"], ".3f"),
                     num(r["async_load_wait_s"]["median"] * 1e3, ".1f")])
    return format_table(cols, rows, rule=False)
