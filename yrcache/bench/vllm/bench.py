# SPDX-License-Identifier: Apache-2.0
"""Multi-turn serving on real vLLM: native vLLM vs vLLM + yrcache (sync) vs vLLM + yrcache (async).

    python -m yrcache.bench.vllm_bench --dir /tmp/yrc-bench [--json out.json] [--plot out.png]
    python -m yrcache.bench.vllm_bench --dir A --dir-b B      # two nodes: turns alternate A/B

Each mode is its own engine process (vLLM's CPU backend, a random-weight Qwen2 built locally),
all configured alike: same model, same KV space (small on purpose), threads pinned. Two phases,
the modes interleaved turn by turn (rotating who goes first), repeated --reps times after one
discarded warm-up pass (each new prompt length is slower the first time); each pass uses its own
cache_salt, so it starts cold for every mode.

1. One conversation (system prompt + turns of user text and answers). Turn 0 is a miss for all.
   On later turns: "local" = native vLLM with the history in its own prefix cache (the best
   vLLM can do), "recompute" = vLLM without a prefix cache (its own engine), and the yrcache
   modes with their engine's prefix cache reset, so their history comes from yrcache: the files,
   or the node's host tier for chunks that node stored or loaded before (the connector's
   default; ``--host-tier-bytes 0``: files only). The table says how many came from each.
   Targets: yrcache hit TTFT <= 1.1x local, <= 1/10 of recompute; async miss <= 1.03x native.
2. N users x M turns, round-robin, with a shared system prompt: the engines' KV space holds
   one user's history, so native vLLM recomputes returning users (as in production),
   while the yrcache modes load them. Per-turn TTFT mean/p50/p99, hit tokens, bytes, CPU.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..common import Bars, Notes, Panel, Progress, format_table, plot_bars, summarize, sysinfo

MODES = ("native", "sync", "async")


_stats = functools.partial(summarize, quantile="nearest", n="n", mean="mean", p50="p50",
                           p99="p99", min="min", max="max")


def read_path_note(dirs: list[str]) -> str:
    """How hit turns read yrcache's objects in ``dirs`` (the Store's read_cache default)."""
    from ...store import paths
    from ...store.store import default_read_cache
    out = []
    for d in dirs:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fs = paths.network_fs(fd)
        finally:
            os.close(fd)
        how = ("through this mount's page cache (what a node read before costs no FUSE or "
               "network round trip)" if default_read_cache(fs) else
               "with O_DIRECT (from the device, not the page cache)")
        out.append(f"{d} ({fs or 'local'}): objects written with O_DIRECT, read {how}")
    return "; ".join(out)


def _tokens(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(4096) for _ in range(n)]


class Bench:
    def __init__(self, a: argparse.Namespace, notes: Notes) -> None:
        from . import model as vllm_model
        from .engine import Engine
        self.a, self.notes = a, notes
        model = vllm_model.build(Path(a.model_dir) / a.shape, a.shape)
        blocks = a.blocks
        env = {"VLLM_CPU_OMP_THREADS_BIND": a.threads, "VLLM_CPU_KVCACHE_SPACE": "1",
               "TORCHDYNAMO_DISABLE": "1"}
        kw = dict(max_model_len=a.max_len, num_gpu_blocks_override=blocks,
                  disable_log_stats=False)
        log = Path(a.dir) / "vllm_bench_engines.log"
        self.engines: dict[str, list[Any]] = {}
        run = f"run-{os.getpid()}-{int(time.time())}"
        self.roots: list[str] = []
        # "recompute" (phase 1) has its own engine, without a prefix cache: running it on the
        # native engine would replace the history blocks that "local" should find there.
        self.engines["recompute"] = [Engine(model, None, log=log, env=env, **kw,
                                            enable_prefix_caching=False)]
        for mode in MODES:
            if mode == "native":
                self.engines[mode] = [Engine(model, None, log=log, env=env, **kw)]
                continue
            nodes = [a.dir] + ([a.dir_b] if a.dir_b else [])
            self.engines[mode] = []
            for d in nodes:
                root = os.path.join(d, run, mode)   # same relative path on both mounts
                self.roots.append(root)
                # every hit is loaded: this benchmark measures the load path against vLLM's own
                # cache and recompute (the measured load-or-recompute decision is weighed in
                # yrcache.bench.vllm.queued)
                cfg = {"root": root, "mode": mode, "chunk_tokens": a.chunk_tokens,
                       "min_load_tokens": 0}
                if a.host_tier_bytes is not None:
                    cfg["host_tier_bytes"] = a.host_tier_bytes
                self.engines[mode].append(Engine(model, cfg, log=log, env=env, **kw))
        self.kv_per_token = vllm_model.kv_bytes_per_token(a.shape)

    def close(self) -> None:
        for es in self.engines.values():
            for e in es:
                e.close()

    def engine(self, mode: str, turn: int) -> Any:
        es = self.engines[mode]
        return es[turn % len(es)]     # two nodes: turns alternate between them

    def turn(self, mode: str, turn: int, prompt: list[int], salt: str, *,
             reset: bool) -> dict[str, Any]:
        e = self.engine(mode, turn)
        if reset:
            e.call("reset")
        ours = mode in ("sync", "async")
        cpu0 = e.call("cpu")["cpu_s"] if ours else 0.0
        c0 = _load_counts(e) if ours else (0, 0)
        t0 = time.perf_counter()
        (r,) = e.generate([prompt], max_tokens=self.a.answer, salt=salt, logprobs=0)
        wall = time.perf_counter() - t0
        if ours:
            e.call("drain")     # stores published before the next turn looks them up
            r["cpu_s"] = e.call("cpu")["cpu_s"] - cpu0
            # chunks this turn loaded, and how many of them came from the node's host tier
            # (chunks it stored or loaded before) rather than from files
            r["chunks_loaded"], r["chunks_from_memory"] = (
                b - a for a, b in zip(c0, _load_counts(e)))
        r["wall"] = wall
        r["prompt_tokens"] = len(prompt)
        return r

    # -- phase 1: one conversation -----------------------------------------------------------------
    def conversation(self, rep: int, salt: str) -> list[dict[str, Any]]:
        a = self.a
        rng = random.Random(1000 + rep)
        system = _tokens(a.system, rng)
        first = system + _tokens(a.user, rng)
        prompts = {m: list(first) for m in ("local", "recompute", "sync", "async")}
        rows = []
        for t in range(a.turns):
            new = _tokens(a.user, rng)
            order = ["native", "sync", "async"] if t == 0 else \
                ["local", "recompute", "sync", "async"]
            k = (rep + t) % len(order)
            order = order[k:] + order[:k]
            res: dict[str, Any] = {}
            for m in order:
                if m in ("native", "local"):   # history in vLLM's own cache (turn 0: a miss)
                    r = self.turn("native", t, prompts["local"], salt, reset=False)
                elif m == "recompute":
                    r = self.turn("recompute", t, prompts[m], salt, reset=False)
                else:                          # history from yrcache's files
                    r = self.turn(m, t, prompts[m], salt, reset=True)
                res[m] = r
            for m in ("local", "recompute", "sync", "async"):
                src = res.get(m) or res.get("native")
                prompts[m] = prompts[m] + src["tokens"] + new
            rows.append({"turn": t, **{m: {k: v for k, v in r.items() if k != "logprobs"}
                                       for m, r in res.items()}})
        return rows

    # -- phase 2: many users -----------------------------------------------------------------------
    def users(self, rep: int, salt: str) -> list[dict[str, Any]]:
        a = self.a
        rng = random.Random(2000 + rep)
        system = _tokens(a.system, rng)
        hist = {m: [system + _tokens(a.user, rng) for _ in range(a.users)] for m in MODES}
        news = [[_tokens(a.user, rng) for _ in range(a.users)] for _ in range(a.turns)]
        rows = []
        for t in range(a.turns):
            for u in range(a.users):
                k = (rep + t + u) % 3
                order = list(MODES[k:] + MODES[:k])
                row: dict[str, Any] = {"turn": t, "user": u}
                for m in order:
                    r = self.turn(m, t * a.users + u, hist[m][u], salt, reset=False)
                    row[m] = {k2: v for k2, v in r.items() if k2 != "logprobs"}
                    hist[m][u] = hist[m][u] + r["tokens"] + news[t][u]
                rows.append(row)
        return rows


def _load_counts(e: Any) -> tuple[int, int]:
    c = e.call("stats")["cache"] or {}
    return int(c.get("load_chunks", 0)), int(c.get("load_tier_hits", 0))


def summarize_passes(passes: list[dict[str, Any]], kv_per_token: int) -> dict[str, Any]:
    """Medians over repetitions of per-turn TTFTs, ratios, spreads."""
    out: dict[str, Any] = {}
    conv = [p["conversation"] for p in passes]
    turns = len(conv[0])
    per_turn = []
    for t in range(turns):
        modes = [m for m in ("native", "local", "recompute", "sync", "async") if m in conv[0][t]]
        row: dict[str, Any] = {"turn": t, "prompt_tokens": conv[0][t][modes[0]]["prompt_tokens"]}
        for m in modes:
            xs = [c[t][m]["ttft"] for c in conv]
            row[m] = {**summarize(xs, ttft_median="median", ttft_min="min", ttft_max="max"),
                      "cached": conv[0][t][m]["cached"]}
            if "chunks_loaded" in conv[0][t][m]:
                for k in ("chunks_loaded", "chunks_from_memory"):
                    row[m][k] = statistics.median(c[t][m][k] for c in conv)
        per_turn.append(row)
    out["conversation"] = per_turn
    hits = [r for r in per_turn if r["turn"] > 0]
    ratios: dict[str, Any] = {}
    for m in ("sync", "async"):
        if hits:
            ratios[f"{m}_hit_vs_local"] = statistics.median(
                r[m]["ttft_median"] / r["local"]["ttft_median"] for r in hits)
            ratios[f"{m}_hit_vs_recompute"] = statistics.median(
                r[m]["ttft_median"] / r["recompute"]["ttft_median"] for r in hits)
        ratios[f"{m}_miss_vs_native"] = per_turn[0][m]["ttft_median"] / \
            per_turn[0]["native"]["ttft_median"]
    out["ratios"] = ratios
    # identical outputs (greedy): the yrcache modes vs vLLM's own cache, every turn, every pass
    same = all(c[t][m]["tokens"] == c[t]["local" if t else "native"]["tokens"]
               for c in conv for t in range(turns) for m in ("sync", "async"))
    out["outputs_identical_to_native"] = same
    users = [p["users"] for p in passes]
    by_turn: dict[str, Any] = {}
    n_turns = max(r["turn"] for r in users[0]) + 1
    for m in MODES:
        rows = []
        for t in range(n_turns):
            xs = [r[m]["ttft"] for u in users for r in u if r["turn"] == t]
            cached = [r[m]["cached"] for u in users for r in u if r["turn"] == t]
            prompt = [r[m]["prompt_tokens"] for u in users for r in u if r["turn"] == t]
            cpu = [r[m].get("cpu_s", 0.0) for u in users for r in u if r["turn"] == t]
            rows.append({"turn": t, **_stats(xs), "hit_rate": sum(cached) / max(1, sum(prompt)),
                         "cpu_s_per_turn": statistics.fmean(cpu) if cpu else 0.0})
        allx = [r[m]["ttft"] for u in users for r in u]
        by_turn[m] = {"per_turn": rows, "all": _stats(allx),
                      "later_turns": _stats([r[m]["ttft"] for u in users for r in u
                                             if r["turn"] > 0])}
    out["users"] = by_turn
    # spread of the per-pass medians of later turns (how stable the headline is)
    out["users_pass_medians"] = {m: [statistics.median([r[m]["ttft"] for r in u if r["turn"] > 0])
                                     for u in users] for m in MODES}
    return out


CONVERSATION_MODES = ("native", "local", "recompute", "sync", "async")


def print_table(doc: dict[str, Any]) -> None:
    s, cfg = doc["summary"], doc["config"]
    print(f"\nOne conversation ({cfg['shape']} model, medians of {cfg['reps']} "
          f"passes; TTFT seconds [min-max]; cached tokens)")
    cols = [("turn", ">4"), ("prompt", " >7")] + [(m, " >23") for m in CONVERSATION_MODES]
    rows = [[r["turn"], r["prompt_tokens"]] + [
        f"{v['ttft_median']:7.3f} [{v['ttft_min']:.2f}-{v['ttft_max']:.2f}] {v['cached']:>4}"
        if v else "" for v in (r.get(m) for m in CONVERSATION_MODES)] for r in s["conversation"]]
    print(format_table(cols, rows, rule=False))
    print("ratios: " + ", ".join(f"{k}={v:.3f}" for k, v in s["ratios"].items()))
    print(f"outputs identical to vLLM's own (greedy): {s['outputs_identical_to_native']}")
    mem = [f"turn {r['turn']} {r['async']['chunks_from_memory']:g}/{r['async']['chunks_loaded']:g}"
           for r in s["conversation"] if r["turn"] > 0 and "chunks_loaded" in r.get("async", {})]
    if mem:
        print("async hit turns, chunks from the host tier / loaded (medians): " + ", ".join(mem))
    print(f"\n{cfg['users']} users x {cfg['turns']} turns, round-robin "
          f"(TTFT seconds over all passes: mean / p50 / p99; hit rate = cached/prompt tokens)")
    cols = [("turn", ">4")] + [(m, " >35") for m in MODES]
    rows = [[t] + [f"{r['mean']:6.2f} {r['p50']:6.2f} {r['p99']:6.2f} hit {r['hit_rate']:4.0%}"
                   f" cpu {r['cpu_s_per_turn']:.2f}"
                   for r in (s["users"][m]["per_turn"][t] for m in MODES)]
            for t in range(cfg["turns"])]
    print(format_table(cols, rows, rule=False))
    lt = {m: s["users"][m]["later_turns"]["p50"] for m in MODES}
    print("later turns p50: " + ", ".join(f"{m} {v:.3f}s" for m, v in lt.items()) +
          f"; native/async = {lt['native'] / lt['async']:.1f}x, "
          f"native/sync = {lt['native'] / lt['sync']:.1f}x")


MODE_LABELS = {"native": "vLLM (miss)", "local": "vLLM prefix cache", "recompute": "vLLM recompute",
               "sync": "vLLM + yrcache sync", "async": "vLLM + yrcache async"}


def plot(doc: dict[str, Any], path: str) -> str | None:
    """Median TTFT per turn of one conversation per mode (log scale), and mean TTFT per turn of
    the round-robin users per mode."""
    s, cfg = doc["summary"], doc["config"]
    conv = s["conversation"]
    one = Panel([str(r["turn"]) for r in conv],
                [Bars(MODE_LABELS[m], [r[m]["ttft_median"] if m in r else float("nan")
                                       for r in conv])
                 for m in ("native", "recompute", "local", "sync", "async")],
                "TTFT (s)", title="one conversation", xlabel="turn", logy=True)
    turns = range(cfg["turns"])
    users = Panel([str(t) for t in turns],
                  [Bars(MODE_LABELS[m] if m != "native" else "vLLM",
                        [s["users"][m]["per_turn"][t]["mean"] for t in turns]) for m in MODES],
                  "mean TTFT (s)", xlabel="turn",
                  title=f"{cfg['users']} users x {cfg['turns']} turns"
                  + (" (two nodes)" if cfg["two_nodes"] else ""))
    return plot_bars(path, [one, users], panel_width=6.0)


def main(argv: list[str] | None = None) -> int:
    from .model import cli
    p = cli(__doc__ or "", shape="400m", dir_help="cache root parent (node A)",
            dir_b_help="node B's mount of the same file system")
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system", type=int, default=1024, help="shared system prompt tokens")
    p.add_argument("--user", type=int, default=128, help="tokens per user message")
    p.add_argument("--answer", type=int, default=32, help="tokens per answer")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--chunk-tokens", type=int, default=128,
                   help="yrcache chunk (default: the CPU block size, what vLLM caches by)")
    p.add_argument("--max-len", type=int, default=1920)
    p.add_argument("--blocks", type=int, default=16,
                   help="engine KV blocks of 128 tokens: one user's history fits, not all "
                        "(native vLLM must recompute returning users)")
    p.add_argument("--threads", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--host-tier-bytes", type=int, default=None,
                   help="the connector's host_tier_bytes (default: its default); 0: every hit "
                        "reads files")
    p.add_argument("--json", default="")
    p.add_argument("--plot", default="")
    p.add_argument("--quick", action="store_true", help="tiny model, 1 pass: a smoke run")
    a = p.parse_args(argv)
    if a.quick:
        a.shape, a.reps, a.users, a.turns, a.system = "tiny", 1, 2, 3, 512
    notes = Notes()
    t0 = time.monotonic()
    b = Bench(a, notes)
    passes = []
    try:
        prog = Progress(a.reps + 1)
        for rep in range(-1, a.reps):
            prog("warm-up pass (discarded)" if rep < 0 else f"pass {rep + 1}/{a.reps}")
            salt = f"pass{rep}-{os.getpid()}"
            one = {"conversation": b.conversation(rep, salt), "users": b.users(rep, salt)}
            if rep >= 0:
                passes.append(one)
    finally:
        b.close()
    notes(read_path_note([a.dir] + ([a.dir_b] if a.dir_b else [])))
    doc = {"config": {**vars(a), "two_nodes": bool(a.dir_b),
                      "kv_bytes_per_token": b.kv_per_token},
           "system": sysinfo(a.dir), "summary": summarize_passes(passes, b.kv_per_token),
           "passes": passes, "notes": list(notes), "seconds": time.monotonic() - t0,
           "command": " ".join(["python -m yrcache.bench.vllm_bench", *(argv or sys.argv[1:])])}
    print_table(doc)
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str))
    if a.plot:
        why = plot(doc, a.plot)
        if why:
            print(f"note: {why}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
