# SPDX-License-Identifier: Apache-2.0
"""``vllm serve`` under many multi-turn chat users: how many users each system serves within a
TTFT SLO, and what a hit costs at long context. The product's claims, measured as users run vLLM.

    python -m yrcache.bench.serve_bench --dir /tmp/yrc-serve --out /tmp/yrc-serve/result
    python -m yrcache.bench.serve_bench --dir A --dir-b B        # two nodes, a router between
    python -m yrcache.bench.serve_bench --scenario docqa --first 32000 --shape 100m --users 1

Each system is its own server process tree (vLLM's OpenAI API server module, its engine core in
another process), started here and kept until the end:
- ``native``: vLLM alone, with its own prefix cache;
- ``async`` / ``sync``: vLLM + yrcache in that mode;
- ``offload``: vLLM's own OffloadingConnector (CPU memory), where this vLLM backend runs it.
Every system gets the same model and the same KV space, sized (``--kv-users``) to hold only a
few conversations: the GPU memory wall, so returning users' histories are gone from vLLM's KV
cache and native vLLM recomputes them while yrcache loads them.

For each number of users N (``--users 1,2,4,8``) the systems run in turn (the order rotating), each
with a fresh cache salt, so every run starts cold; ``--reps K`` repeats every N K times (systems
still interleaved, each repetition with its own arrival seed) and reports medians over them.
Users arrive open-loop, think between turns and send their whole history each turn
(yrcache.bench.vllm.users). With ``--dir-b``, every system gets
a second server on the second root (another mount of the same shared file system) and each turn
goes to a random server: no session affinity.

Reported per system and N: TTFT p50/p90/p99 (time to the first streamed token; all turns, and hit
turns alone), requests/s and tokens/s, the hit rate from the responses
(``usage.prompt_tokens_details.cached_tokens``) and from the servers' /metrics, yrcache's lookup
round trips and loaded objects, and the servers' peak memory; with ``--reps``, each the median over
the repetitions, and the p90 TTFT of every repetition. The SLO: the largest N whose (median) p90
TTFT is within ``--slo`` seconds; ``users per server`` is that N against native vLLM's.
``--scenario docqa``: each user sends a long document (``--first``) and asks ``--turns``
questions about it; reported: the first question's TTFT (a miss) against later ones (hits).

Outputs under ``--out``: serve_bench.json (with every server's exact command line), serve_bench.png
(TTFT against N, one line per system) and each server's log.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common import Notes, Progress, format_table, num, sysinfo
from .users import Run, Workload, run_users

SYSTEMS = ("native", "async", "sync", "offload")
#: /metrics counters whose change over a run is reported (vLLM's and yrcache's)
METRICS = {"local_hits": "vllm:prefix_cache_hits_total",
           "local_queries": "vllm:prefix_cache_queries_total",
           "external_hits": "vllm:external_prefix_cache_hits_total",
           "external_queries": "vllm:external_prefix_cache_queries_total",
           "loaded_tokens": "vllm:yrcache_loaded_tokens_total",
           "loaded_objects": "vllm:yrcache_loaded_objects_total",
           "stored_objects": "vllm:yrcache_stored_objects_total",
           "lookup_round_trips": "vllm:yrcache_lookup_round_trips_total",
           "existence_checks": "vllm:yrcache_lookup_existence_checks_total",
           "stores_dropped": "vllm:yrcache_stores_dropped_total"}
BLOCK_TOKENS = 128   # vLLM's CPU backend block size
SLO_CURVE = (0.5, 1.0, 2.0, 3.0, 5.0)   # seconds: p90 TTFT thresholds reported besides --slo
#: scenario -> default prompt shape (tokens)
SCENARIOS = {"chat": {"system": 1024, "first": 256, "user": 128, "answer": 32},
             "docqa": {"system": 0, "first": 8192, "user": 64, "answer": 16}}


@dataclass
class System:
    name: str
    servers: list[Any]
    error: str = ""


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def peak_rss(pid: int) -> int:
    """Peak resident bytes of a process and its descendants (VmHWM, summed)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def scrape(servers: list[Any]) -> dict[str, float]:
    """The METRICS counters, summed over ``servers`` (0 where a server has no such series)."""
    out = dict.fromkeys(METRICS, 0.0)
    for s in servers:
        m = s.metrics()
        for k, name in METRICS.items():
            out[k] += sum(m.get(name, {}).values())
    return out


def summarize_run(run: Run, before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    ok = [t for t in run.turns if not t.error]
    ttft = [t.ttft for t in ok]
    hits = [t.ttft for t in ok if t.turn > 0]
    first = [t.ttft for t in ok if t.turn == 0]
    prompt = sum(t.prompt_tokens for t in ok)
    cached = sum(t.cached_tokens or 0 for t in ok)
    answer = sum(t.answer_tokens for t in ok)
    d = {k: after[k] - before[k] for k in METRICS}
    wall = run.wall_s or float("nan")
    return {
        "requests": len(run.turns), "errors": len(run.turns) - len(ok),
        "error_samples": sorted({t.error for t in run.turns if t.error})[:3],
        "ttft_p50": _pct(ttft, 0.5), "ttft_p90": _pct(ttft, 0.9), "ttft_p99": _pct(ttft, 0.99),
        "first_turn_ttft_p50": _pct(first, 0.5), "hit_turn_ttft_p50": _pct(hits, 0.5),
        "hit_turn_ttft_p90": _pct(hits, 0.9),
        "requests_per_s": len(ok) / wall, "output_tokens_per_s": answer / wall,
        "prompt_tokens_per_s": prompt / wall, "wall_s": run.wall_s,
        "prompt_tokens": prompt, "cached_tokens": cached,
        "hit_rate": cached / prompt if prompt else float("nan"),
        "metrics": d,
        "metrics_hit_rate": ((d["local_hits"] + d["external_hits"]) / d["local_queries"]
                             if d["local_queries"] else float("nan")),
    }


#: per-run figures that a row over repetitions reports as their median
MEDIAN_KEYS = ("ttft_p50", "ttft_p90", "ttft_p99", "first_turn_ttft_p50", "hit_turn_ttft_p50",
               "hit_turn_ttft_p90", "requests_per_s", "output_tokens_per_s",
               "prompt_tokens_per_s", "wall_s", "hit_rate", "metrics_hit_rate")


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]   # NaN (no such turns) left out
    return statistics.median(xs) if xs else float("nan")


def combine_reps(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for one system and N over repeated runs: medians of the per-run figures (and of
    the /metrics deltas), summed requests and errors, every run's p90 TTFT, and the runs."""
    first = runs[0]
    row: dict[str, Any] = {"system": first["system"], "users": first["users"],
                           "reps": len(runs),
                           "requests": sum(r["requests"] for r in runs),
                           "errors": sum(r["errors"] for r in runs),
                           "error_samples": sorted({e for r in runs
                                                    for e in r["error_samples"]})[:3]}
    row.update({k: _median([r[k] for r in runs]) for k in MEDIAN_KEYS})
    row["prompt_tokens"] = sum(r["prompt_tokens"] for r in runs)
    row["cached_tokens"] = sum(r["cached_tokens"] for r in runs)
    row["metrics"] = {k: _median([r["metrics"][k] for r in runs]) for k in METRICS}
    row["ttft_p90_runs"] = [r["ttft_p90"] for r in runs]
    row["runs"] = runs
    return row


def start_systems(a: argparse.Namespace, model: Path, out: Path, notes: Notes,
                  progress: Progress) -> list[System]:
    from .server import Server
    run = f"run-{os.getpid()}-{int(time.time())}"
    roots = [a.dir] + ([a.dir_b] if a.dir_b else [])
    env = {"VLLM_CPU_OMP_THREADS_BIND": a.threads, "VLLM_CPU_KVCACHE_SPACE": "1"}
    args = ("--num-gpu-blocks-override", str(a.blocks), "--block-size", str(BLOCK_TOKENS))
    systems = []
    for name in a.systems.split(","):
        sysm = System(name, [])
        for node, d in enumerate(roots):
            progress(f"start {name} (node {node})")
            kw: dict[str, Any] = {}
            if name in ("async", "sync"):
                # the same relative path on both mounts: one shared cache
                kw["connector"] = {"root": os.path.join(d, run, name), "mode": name,
                                   "chunk_tokens": a.chunk_tokens}
            else:
                kw["connector"] = None
            if name == "offload":
                kw["kv_config"] = {"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
                                   "kv_connector_extra_config": {
                                       "cpu_bytes_to_use": a.offload_bytes}}
            log = out / f"{name}-node{node}.log"
            try:
                sysm.servers.append(Server(model, log=log, max_model_len=a.max_len,
                                           args=args, env=env, timeout=a.start_timeout, **kw))
            except RuntimeError as e:
                # the root cause: the first error line the engine logged
                lines = [ln for ln in log.read_text(errors="replace").splitlines()
                         if " ERROR " in ln and "Error:" in ln]
                sysm.error = (lines[0] if lines else str(e).splitlines()[0])[-300:]
                notes(f"{name} did not start on this vLLM backend: {sysm.error} (log: {log})")
                break
        if sysm.error:
            for s in sysm.servers:
                s.close()
            sysm.servers = []
        systems.append(sysm)
    return systems


def largest_within(rows: list[dict[str, Any]], system: str, slo: float) -> int:
    """The largest N at which ``system``'s p90 TTFT met the SLO, all smaller N meeting it too
    (0: none did)."""
    best = 0
    for r in sorted((r for r in rows if r["system"] == system), key=lambda r: r["users"]):
        if r["errors"] or not r["ttft_p90"] <= slo:
            break
        best = r["users"]
    return best


def plot(path: str, rows: list[dict[str, Any]], slo: float, title: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot written"
    if not any(r["ttft_p90"] > 0 for r in rows):   # NaN or none: nothing to draw on a log axis
        return "no turn was answered: no plot written"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in dict.fromkeys(r["system"] for r in rows):
        rs = sorted((r for r in rows if r["system"] == name), key=lambda r: r["users"])
        xs = [r["users"] for r in rs]
        axes[0].plot(xs, [r["ttft_p90"] for r in rs], marker="o", label=name)
        axes[1].plot(xs, [r["hit_rate"] * 100 for r in rs], marker="o", label=name)
    axes[0].axhline(slo, color="red", ls="--", lw=1, label=f"SLO p90 {slo:g} s")
    axes[0].set(xlabel="users", ylabel="TTFT p90 (s)", xscale="log", yscale="log",
                title=title)
    axes[1].set(xlabel="users", ylabel="prompt tokens cached (%)", xscale="log",
                title="hit rate (usage.cached_tokens)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def workload(a: argparse.Namespace, users: int, rep: int = 0) -> Workload:
    return Workload(users=users, turns=a.turns, system_tokens=a.system, first_tokens=a.first,
                    user_tokens=a.user, answer_tokens=a.answer, arrival_s=a.arrival,
                    think_s=a.think, seed=a.seed + 1000 * rep)


def final_tokens(a: argparse.Namespace) -> int:
    """A conversation's prompt at its last turn."""
    return a.system + a.first + (a.turns - 1) * (a.answer + a.user)


def _p90_cell(r: dict[str, Any]) -> str:
    """The (median) p90 TTFT, with the range over repetitions when there were several."""
    runs = r.get("ttft_p90_runs") or []
    cell = num(r["ttft_p90"], ".3f")
    if len(runs) > 1:
        cell += f" [{num(min(runs), '.2f')}-{num(max(runs), '.2f')}]"
    return cell


def table(rows: list[dict[str, Any]]) -> str:
    wide = any(r.get("reps", 1) > 1 for r in rows)
    cols = [("system", "<8"), ("users", ">6"), ("req", ">5"), ("err", ">4"),
            ("TTFT p50", ">10"), ("p90" + (" [runs]" if wide else ""), ">23" if wide else ">9"),
            ("p99", ">9"), ("turn0 p50", ">10"),
            ("later p50", ">10"), ("req/s", ">7"), ("out tok/s", ">10"), ("hit%", ">6"),
            ("/metrics hit%", ">14"), ("objects loaded", ">15"), ("lookup RTs", ">11")]
    return format_table(cols, ([
        r["system"], r["users"], r["requests"], r["errors"], num(r["ttft_p50"], ".3f"),
        _p90_cell(r), num(r["ttft_p99"], ".3f"), num(r["first_turn_ttft_p50"], ".3f"),
        num(r["hit_turn_ttft_p50"], ".3f"), num(r["requests_per_s"]),
        num(r["output_tokens_per_s"], ".1f"), num(100 * r["hit_rate"], ".1f"),
        num(100 * r["metrics_hit_rate"], ".1f"), int(r["metrics"]["loaded_objects"]),
        int(r["metrics"]["lookup_round_trips"])] for r in rows))


def main(argv: list[str] | None = None) -> int:
    from ..common import usable_dir
    from . import model as vllm_model
    p = vllm_model.cli(__doc__ or "", shape="tiny", dir_help="parent of the cache roots",
                       dir_b_help="a second node's root parent (another mount of a shared FS)")
    p.add_argument("--out", default="", help="result folder (default: DIR/serve-result)")
    p.add_argument("--scenario", choices=("chat", "docqa"), default="chat")
    p.add_argument("--systems", default="native,async,sync,offload")
    p.add_argument("--users", default="1,2,4,8", help="comma-separated numbers of users")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--reps", type=int, default=1,
                   help="runs per system and N (interleaved); rows report their medians")
    p.add_argument("--system", type=int, help="shared system prompt tokens (chat 1024, docqa 0)")
    p.add_argument("--first", type=int,
                   help="first user message (the document) tokens (chat 256, docqa 8192)")
    p.add_argument("--user", type=int, help="tokens per later user message (chat 128, docqa 64)")
    p.add_argument("--answer", type=int, help="tokens per answer (chat 32, docqa 16)")
    p.add_argument("--arrival", type=float, default=0.5, help="mean seconds between arrivals")
    p.add_argument("--think", type=float, default=1.0, help="mean think time, seconds")
    p.add_argument("--slo", type=float, default=2.0,
                   help="TTFT p90 SLO, seconds (all turns: each user's first turn is a miss)")
    p.add_argument("--kv-users", type=float, default=2,
                   help="KV space, in whole final conversations (the memory wall)")
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--offload-bytes", type=int, default=1 << 30)
    p.add_argument("--threads", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start-timeout", type=float, default=300)
    p.add_argument("--json", default="", help="also write the JSON here")
    p.add_argument("--plot", default="", help="also write the PNG here")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 users x 2 turns")
    a = p.parse_args(argv)
    # docqa: one long document per user (no shared prompt), short questions and answers
    for k, v in SCENARIOS[a.scenario].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.quick:
        a.users, a.turns, a.system, a.first, a.user, a.answer = "2", 2, 256, 128, 64, 8
        a.arrival, a.think = 0.1, 0.1
    if a.reps < 1:
        print(f"error: --reps must be at least 1, got {a.reps}", file=sys.stderr)
        return 2
    if usable_dir(a.dir) is None or (a.dir_b and usable_dir(a.dir_b) is None):
        return 2
    ns = [int(x) for x in a.users.split(",")]
    last = final_tokens(a)
    a.max_len = BLOCK_TOKENS * math.ceil((last + a.answer + 1) / BLOCK_TOKENS)
    a.blocks = max(math.ceil(a.kv_users * last / BLOCK_TOKENS), a.max_len // BLOCK_TOKENS + 1)
    out = Path(a.out or os.path.join(a.dir, "serve-result"))
    out.mkdir(parents=True, exist_ok=True)
    notes = Notes()
    names = a.systems.split(",")
    unknown = set(names) - set(SYSTEMS)
    if unknown:
        print(f"error: unknown systems {sorted(unknown)} (known: {SYSTEMS})", file=sys.stderr)
        return 2
    nodes = 2 if a.dir_b else 1
    progress = Progress(len(names) * nodes + len(ns) * len(names) * a.reps)
    model = vllm_model.build(Path(a.model_dir) / a.shape, a.shape,
                             max_positions=max(32768, a.max_len))
    doc: dict[str, Any] = {"config": vars(a), "system": sysinfo(a.dir), "model": {
        "shape": a.shape, **vllm_model.SHAPES[a.shape],
        "kv_bytes_per_token": vllm_model.kv_bytes_per_token(a.shape)},
        "kv_space": {"blocks": a.blocks, "block_tokens": BLOCK_TOKENS,
                     "final_conversation_tokens": last}}
    systems = start_systems(a, model, out, notes, progress)
    try:
        doc["servers"] = {s.name: {"error": s.error, "commands": [v.command for v in s.servers],
                                   "startup_s": [v.startup_s for v in s.servers]}
                          for s in systems}
        live = [s for s in systems if s.servers]
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        k = 0
        for n in ns:
            for rep in range(a.reps):
                order = live[k % len(live):] + live[:k % len(live)] if live else []
                k += 1
                for sysm in order:
                    progress(f"{sysm.name}: {n} users x {a.turns} turns"
                             + (f" (repetition {rep + 1}/{a.reps})" if a.reps > 1 else ""))
                    before = scrape(sysm.servers)
                    run = run_users([s.url for s in sysm.servers], str(model),
                                    workload(a, n, rep),
                                    salt=f"{sysm.name}-{n}-{rep}-{time.time_ns()}")
                    after = scrape(sysm.servers)
                    one = {"system": sysm.name, "users": n, "rep": rep,
                           **summarize_run(run, before, after), "run": run.as_json()}
                    runs.setdefault((sysm.name, n), []).append(one)
                    for e in one["error_samples"]:
                        notes(f"{sysm.name} at {n} users: {e}")
        rows = [combine_reps(rs) for rs in runs.values()]
        for sysm in live:
            doc["servers"][sysm.name]["peak_rss_bytes"] = [peak_rss(v.p.pid)
                                                           for v in sysm.servers]
    finally:
        for sysm in systems:
            for s in sysm.servers:
                s.close()
    rows.sort(key=lambda r: (names.index(r["system"]), r["users"]))
    slo = {s.name: largest_within(rows, s.name, a.slo) for s in live}
    # the same for other thresholds: how the users-per-server ratio depends on the SLO chosen
    curve = {t: {s.name: largest_within(rows, s.name, t) for s in live}
             for t in sorted({a.slo, *SLO_CURVE})}
    doc["rows"], doc["notes"] = rows, notes
    doc["slo"] = {"p90_s": a.slo, "largest_users": slo, "by_threshold": curve}
    if slo.get("native"):
        doc["slo"]["users_vs_native"] = {k: v / slo["native"] for k, v in slo.items()}
    print(f"\nvllm serve, {a.shape} model, {a.scenario}: {a.turns} turns of {a.user} tokens "
          f"(+{a.answer} answered) after {a.system} shared + {a.first} first; KV space "
          f"{a.blocks} blocks of {BLOCK_TOKENS} ({a.kv_users:g} final conversations); "
          f"{nodes} node(s)" + (f"; medians of {a.reps} runs per row" if a.reps > 1 else ""))
    print(table(rows))
    print(f"largest users within p90 TTFT <= {a.slo:g} s: " + ", ".join(
        f"{k} {v}" for k, v in slo.items())
        + (f"; yrcache async / native = {slo['async'] / slo['native']:.2f}x"
           if slo.get("native") and "async" in slo else ""))
    print("largest users within other p90 TTFT SLOs: " + "; ".join(
        f"{t:g} s: " + ", ".join(f"{k} {v}" for k, v in c.items()) for t, c in curve.items()))
    if a.scenario == "docqa":
        doc["docqa"] = docqa_summary(rows)
        for r in doc["docqa"]:
            print(f"docqa {r['system']} {r['users']} users: miss {num(r['miss_s'], '.3f')} s, "
                  f"hit {num(r['hit_s'], '.3f')} s, miss/hit {num(r['miss_over_hit'], '.1f')}x")
    for sysm in systems:
        if sysm.error:
            print(f"{sysm.name}: not run ({sysm.error})")
        else:
            mib = [x / 2**20 for x in doc["servers"][sysm.name]["peak_rss_bytes"]]
            print(f"{sysm.name}: peak memory of the server processes " +
                  ", ".join(f"{m:.0f} MiB" for m in mib))
    text = json.dumps(doc, indent=1, default=str)
    for path in filter(None, (str(out / "serve_bench.json"), a.json)):
        Path(path).write_text(text)
    for path in filter(None, (str(out / "serve_bench.png"), a.plot)):
        why = plot(path, rows, a.slo, f"{a.shape}, {a.scenario}, {nodes} node(s)")
        if why:
            notes(why)
    print(f"results and server logs: {out}")
    return 0


def docqa_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        miss, hit = r["first_turn_ttft_p50"], r["hit_turn_ttft_p50"]
        out.append({"system": r["system"], "users": r["users"], "miss_s": miss, "hit_s": hit,
                    "miss_over_hit": miss / hit if hit and hit == hit else float("nan")})
    return out


__all__ = ["main"]
