# SPDX-License-Identifier: Apache-2.0
"""Loading ahead and deciding, measured on real vLLM (issue 15).

    python -m yrcache.bench.vllm.queued --dir /tmp/yrc-q [--json out.json] [--quick]

1. ``queue``: C conversations whose turns arrive together, KV space (running requests) for 2: six
   of eight wait in vLLM's queue on every turn. Systems, interleaved wave by wave (rotating who
   goes first): vLLM holding every history in its own prefix cache (the in-memory hit), and
   yrcache async with its engine's prefix cache emptied before each wave (histories come from
   the files) with read-ahead on and off. Per hit wave: TTFT mean / p50 over the requests, and how
   long the model thread waited for storage after admission (``load_wait_s``). Target: with
   read-ahead, hit TTFT within 1.05x of the in-memory hit when the queue wait covers the load.
2. ``sweep``: one request with a stored prefix of L tokens (128 ... 16K) and vLLM's prefix cache
   empty, TTFT under three policies: always load (``min_load_tokens=0``), always recompute
   (vLLM alone), and the measured decision (the default). On each root given (``--dir``,
   ``--dir-b`` e.g. a MooseFS mount) and on ``--dir`` with reads throttled by the fault-injection
   hook (``--throttle``). Medians of ``--reps`` interleaved runs. Target: the decision within 5% of
   the better of the two fixed policies.
3. ``first``: the first and second requests after start-up of ``vllm serve`` (API server and
   engine core in their own processes, TTFT of a streamed completion as the client sees it),
   native vs yrcache async, a fresh server each, ``--reps`` interleaved pairs (issue 15 section 3).
4. ``hit``: a long history (``--hit-tokens``) loaded from the files, async against sync against
   vLLM's in-memory hit, with no store in flight and right after a long miss whose stores are
   still being written; TTFT and yrcache's CPU seconds per turn (issue 15 section 4).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..common import Notes, Progress, format_table, sysinfo

SWEEP = (128, 512, 2048, 8192, 16384)


def _tokens(n: int, rng: random.Random) -> list[int]:
    return [rng.randrange(4096) for _ in range(n)]


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class Ctx:
    def __init__(self, a: argparse.Namespace) -> None:
        from . import model as vllm_model
        self.a = a
        self.model = vllm_model.build(Path(a.model_dir) / a.shape, a.shape)
        self.env = {"VLLM_CPU_OMP_THREADS_BIND": a.threads, "VLLM_CPU_KVCACHE_SPACE": "1",
                    "TORCHDYNAMO_DISABLE": "1"}
        self.log = Path(a.dir) / "queued_bench_engines.log"
        self.run = f"q-{os.getpid()}-{int(time.time())}"

    def engine(self, connector: dict[str, Any] | None, **kw: Any) -> Any:
        from .engine import Engine
        if connector is not None:
            # every scenario here reads back what the same engine stored, and measures reads
            # from the file system (read-ahead, load or recompute, loads beside stores): the
            # connector's host tier (on by default) would serve those chunks from memory
            connector = {"host_tier_bytes": 0, **connector}
        return Engine(self.model, connector, log=self.log, env=self.env,
                      max_model_len=self.a.max_len, disable_log_stats=False, **kw)

    def root(self, d: str, name: str) -> str:
        return os.path.join(d, self.run, name)


def _queue(e: Any, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
    return e.call("queue", prompts=[{"ids": p, "max_tokens": max_tokens} for p in prompts])


# -- 1. a queue of conversations ------------------------------------------------------------------
def queue_scenario(ctx: Ctx, notes: Notes) -> dict[str, Any]:
    a = ctx.a
    systems = {
        "vllm in-memory": None,
        "yrcache prefetch": {"root": ctx.root(a.dir, "q-on"), "mode": "async"},
        "yrcache no prefetch": {"root": ctx.root(a.dir, "q-off"), "mode": "async",
                                "prefetch_bytes": 0},
    }
    engines = {n: ctx.engine(c, max_num_seqs=2) for n, c in systems.items()}
    if a.queue_faults:   # a slow root: what read-ahead hides behind the queue wait
        for n, c in systems.items():
            if c is not None:
                engines[n].call("faults", spec=a.queue_faults)
    rows: list[dict[str, Any]] = []
    try:
        prog = Progress(a.reps * a.turns)
        for rep in range(a.reps):
            rng = random.Random(5000 + rep)
            system = _tokens(a.system, rng)
            hist = {n: [system + _tokens(a.user, rng) for _ in range(a.convs)] for n in engines}
            news = [[_tokens(a.user, rng) for _ in range(a.convs)] for _ in range(a.turns)]
            for t in range(a.turns):
                prog(f"queue: pass {rep + 1}/{a.reps}, turn {t}")
                names = list(engines)
                k = (rep + t) % len(names)
                for n in names[k:] + names[:k]:
                    e = engines[n]
                    if systems[n] is not None:
                        e.call("reset")   # histories come from the files
                    w0 = e.call("cpu") if systems[n] is not None else {}
                    r = _queue(e, hist[n], a.answer)
                    if systems[n] is not None:
                        e.call("drain")
                    w1 = e.call("cpu") if systems[n] is not None else {}
                    res = r["results"]
                    rows.append({"rep": rep, "turn": t, "system": n,
                                 "ttft": [o["ttft"] for o in res],
                                 "cached": [o["cached"] for o in res],
                                 "prompt": [len(p) for p in hist[n]],
                                 "load_wait_s": w1.get("load_wait_s", 0.0)
                                 - w0.get("load_wait_s", 0.0),
                                 "cpu_s": w1.get("cpu_s", 0.0) - w0.get("cpu_s", 0.0)})
                    for c, o in enumerate(res):
                        hist[n][c] = hist[n][c] + o["tokens"] + news[t][c]
        stats = {n: engines[n].call("stats") for n in engines if systems[n] is not None}
    finally:
        for e in engines.values():
            e.close()
    summary: dict[str, Any] = {}
    for n in systems:
        per_turn = []
        for t in range(a.turns):
            rs = [r for r in rows if r["system"] == n and r["turn"] == t]
            xs = [x for r in rs for x in r["ttft"]]
            per_turn.append({"turn": t, "ttft_mean": statistics.fmean(xs),
                             "ttft_p50": _median(xs),
                             "cached": statistics.fmean(x for r in rs for x in r["cached"]),
                             "prompt": statistics.fmean(x for r in rs for x in r["prompt"]),
                             "load_wait_s": _median([r["load_wait_s"] for r in rs]),
                             "cpu_s": _median([r["cpu_s"] for r in rs])})
        summary[n] = per_turn
    hits = range(1, a.turns)
    ratio = {n: _median([summary[n][t]["ttft_mean"] / summary["vllm in-memory"][t]["ttft_mean"]
                         for t in hits]) for n in systems if n != "vllm in-memory"}
    counters = {n: {k: v for k, v in (s["cache"] or {}).items() if k.startswith("prefetch_")
                    or k in ("load_chunks", "load_partial")} | {
                        k: v for k, v in (s.get("scheduler") or {}).items()
                        if k.startswith(("decision_", "prefetch_"))}
                for n, s in stats.items()}
    return {"rows": rows, "per_turn": summary, "hit_ttft_vs_in_memory": ratio,
            "counters": counters}


def print_queue(q: dict[str, Any], a: argparse.Namespace) -> None:
    print(f"\nQueue: {a.convs} conversations, turns arriving together, 2 running at a time "
          f"({a.shape} model, {a.reps} passes; TTFT mean / p50 s over the requests of a turn; "
          f"storage wait after admission per turn)")
    names = list(q["per_turn"])
    cols = [("turn", ">4"), ("prompt", ">7")] + [(n, " >34") for n in names]
    rows = []
    for t in range(a.turns):
        first = q["per_turn"][names[0]][t]
        rows.append([t, f"{first['prompt']:.0f}"] + [
            f"{r['ttft_mean']:6.3f} {r['ttft_p50']:6.3f} cached {r['cached']:5.0f} "
            f"wait {r['load_wait_s']:.3f}" for r in (q["per_turn"][n][t] for n in names)])
    print(format_table(cols, rows, rule=False))
    print("hit-turn TTFT vs vLLM's in-memory hit (median over turns): " +
          ", ".join(f"{n} {v:.3f}x" for n, v in q["hit_ttft_vs_in_memory"].items()))
    for n, c in q["counters"].items():
        print(f"{n}: " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if v))


# -- 2. the decision against fixed policies -------------------------------------------------------
def sweep_scenario(ctx: Ctx, notes: Notes) -> dict[str, Any]:
    a = ctx.a
    roots = [("local", a.dir, "")] + ([("shared", a.dir_b, "")] if a.dir_b else []) + \
        ([("throttled", a.dir, a.throttle)] if a.throttle else [])
    lengths = [n for n in SWEEP if n + 64 < a.max_len]
    out: dict[str, Any] = {}
    prog = Progress(len(roots) * len(lengths) * a.reps)
    for label, d, faults in roots:
        policies = {"load": {"min_load_tokens": 0}, "decide": {}}
        engines = {p: ctx.engine({"root": ctx.root(d, f"sweep-{label}-{p}"), "mode": "async",
                                  **kw}) for p, kw in policies.items()}
        engines["recompute"] = ctx.engine(None)
        res: dict[str, dict[int, list[float]]] = {p: {} for p in engines}
        choices: dict[int, dict[str, int]] = {}
        try:
            rng = random.Random(7)
            warm = _tokens(2048, rng)   # measures the prefill rate and the reads for "decide"
            for p, e in engines.items():
                e.generate([warm], max_tokens=1, logprobs=0)
                if p != "recompute":
                    e.call("drain")
                    e.call("reset")
                    e.generate([warm], max_tokens=1, logprobs=0)
            for n in lengths:
                prompt = _tokens(n + 64, rng)
                for p, e in engines.items():   # stored once (a miss), timed later as hits
                    e.generate([prompt], max_tokens=1, logprobs=0)
                    if p != "recompute":
                        e.call("drain")
                        if faults:
                            e.call("faults", spec=faults)
                before = engines["decide"].call("stats")["scheduler"]
                for rep in range(a.reps):
                    prog(f"sweep {label}: {n} tokens, rep {rep + 1}")
                    names = list(engines)
                    k = rep % len(names)
                    for p in names[k:] + names[:k]:
                        e = engines[p]
                        e.call("reset")
                        (r,) = e.generate([prompt], max_tokens=1, logprobs=0)
                        res[p].setdefault(n, []).append(r["ttft"])
                after = engines["decide"].call("stats")["scheduler"]
                choices[n] = {k2[9:]: after.get(k2, 0) - before.get(k2, 0)
                              for k2 in after if k2.startswith("decision_")}
                if faults:
                    for p in ("load", "decide"):
                        engines[p].call("faults", spec="")
            planner = engines["decide"].call("stats")["planner"]
        finally:
            for e in engines.values():
                e.close()
        rows = []
        for n in lengths:
            med = {p: _median(res[p][n]) for p in engines}
            best = min(med["load"], med["recompute"])
            rows.append({"hit_tokens": n, **{f"{p}_ttft": v for p, v in med.items()},
                         "decide_vs_best": med["decide"] / best,
                         "choices": {k: v for k, v in choices[n].items() if v}})
        out[label] = {"rows": rows, "planner": planner, "faults": faults}
    return out


def print_sweep(s: dict[str, Any], a: argparse.Namespace) -> None:
    for label, r in s.items():
        print(f"\nLoad or recompute, {label} root" + (f" (faults {r['faults']})" if r["faults"]
                                                      else "") +
              f": TTFT median of {a.reps}, s; the decision's choices")
        cols = [("hit", ">6"), ("load", ">8"), ("recompute", ">10"), ("decide", ">8"),
                ("decide/best", ">12"), ("choices", "<30")]
        rows = [[x["hit_tokens"], f"{x['load_ttft']:.4f}", f"{x['recompute_ttft']:.4f}",
                 f"{x['decide_ttft']:.4f}", f"{x['decide_vs_best']:.3f}",
                 " ".join(f"{k}:{v}" for k, v in x["choices"].items())] for x in r["rows"]]
        print(format_table(cols, rows, rule=False))
        p = r["planner"]
        print("measured: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in p.items()))


# -- 3. the first request -------------------------------------------------------------------------
def first_scenario(ctx: Ctx, notes: Notes) -> dict[str, Any]:
    from .server import Server
    a = ctx.a
    res: dict[str, dict[str, list[float]]] = {m: {"first": [], "second": [], "startup": []}
                                              for m in ("native", "async")}
    commands: dict[str, list[str]] = {}
    prog = Progress(a.reps)
    for rep in range(a.reps):
        prog(f"first request: pair {rep + 1}/{a.reps}")
        order = ["native", "async"] if rep % 2 == 0 else ["async", "native"]
        rng = random.Random(900 + rep)
        prompts = [_tokens(600, rng), _tokens(600, rng)]
        for m in order:
            c = None if m == "native" else {"root": ctx.root(a.dir, f"first-{rep}"),
                                            "mode": "async"}
            with Server(ctx.model, c, ctx.log, max_model_len=a.max_len) as s:
                commands[m] = s.command
                res[m]["startup"].append(s.startup_s)
                res[m]["first"].append(s.ttft(prompts[0]))
                res[m]["second"].append(s.ttft(prompts[1]))
    return {"ttft": res, "commands": commands,
            "median": {m: {k: _median(v) for k, v in r.items()} for m, r in res.items()}}


# -- 4. hits with and without stores in flight ----------------------------------------------------
def hit_scenario(ctx: Ctx, notes: Notes) -> dict[str, Any]:
    a = ctx.a
    modes = {"sync": {"root": ctx.root(a.dir, "hit-sync"), "mode": "sync"},
             "async": {"root": ctx.root(a.dir, "hit-async"), "mode": "async"},
             "in-memory": None}
    engines = {m: ctx.engine(c, enable_prefix_caching=True) for m, c in modes.items()}
    rows: list[dict[str, Any]] = []
    try:
        rng = random.Random(11)
        prog = Progress(a.reps)
        for rep in range(a.reps):
            prog(f"hit: rep {rep + 1}/{a.reps}")
            hist = _tokens(a.hit_tokens, rng)
            other = _tokens(a.hit_tokens, rng)
            for m, e in engines.items():   # the history is computed (and stored) once
                e.generate([hist], max_tokens=1, logprobs=0)
                if modes[m] is not None:
                    e.call("drain")
            names = list(engines)
            k = rep % len(names)
            for m in names[k:] + names[:k]:
                e = engines[m]
                ours = modes[m] is not None
                for inflight in (False, True):
                    if ours:
                        e.call("reset")   # keep nothing of the history in vLLM's own cache
                    else:   # in-memory: the history stays, the other prompt goes through
                        pass
                    if inflight:   # a long miss just finished: its stores are being written
                        e.generate([other + _tokens(16, rng)], max_tokens=1, logprobs=0)
                        if ours:
                            e.call("reset")
                        busy = e.call("stats")["cache"]["chunks_being_stored"] if ours else 0
                    else:
                        busy = 0
                    c0 = e.call("cpu") if ours else {}
                    (r,) = e.generate([hist + _tokens(64, rng)], max_tokens=1, logprobs=0)
                    c1 = e.call("cpu") if ours else {}
                    if ours:
                        e.call("drain")
                    rows.append({"rep": rep, "mode": m, "stores_in_flight": inflight,
                                 "chunks_being_stored": busy, "ttft": r["ttft"],
                                 "cached": r["cached"],
                                 "cpu_s": c1.get("cpu_s", 0.0) - c0.get("cpu_s", 0.0),
                                 "load_wait_s": c1.get("load_wait_s", 0.0)
                                 - c0.get("load_wait_s", 0.0)})
    finally:
        for e in engines.values():
            e.close()
    summary = {}
    for m in modes:
        for inflight in (False, True):
            rs = [r for r in rows if r["mode"] == m and r["stores_in_flight"] == inflight]
            summary[f"{m}{' +stores' if inflight else ''}"] = {
                "ttft_p50": _median([r["ttft"] for r in rs]),
                "cpu_s_p50": _median([r["cpu_s"] for r in rs]),
                "load_wait_p50": _median([r["load_wait_s"] for r in rs]),
                "cached": _median([r["cached"] for r in rs]),
                "chunks_being_stored": _median([r["chunks_being_stored"] for r in rs])}
    return {"rows": rows, "summary": summary}


def print_hit(h: dict[str, Any], a: argparse.Namespace) -> None:
    print(f"\nHit of a {a.hit_tokens}-token history ({a.shape} model, medians of {a.reps}): "
          f"TTFT, yrcache CPU seconds, model-thread wait for storage; '+stores': right after a "
          f"long miss whose stores were still in flight")
    cols = [("system", "<20"), ("ttft s", ">8"), ("cpu s", ">7"), ("wait s", ">7"),
            ("cached", ">7"), ("storing", ">8")]
    rows = [[n, f"{v['ttft_p50']:.3f}", f"{v['cpu_s_p50']:.2f}", f"{v['load_wait_p50']:.3f}",
             f"{v['cached']:.0f}", f"{v['chunks_being_stored']:.0f}"]
            for n, v in h["summary"].items()]
    print(format_table(cols, rows, rule=False))


def main(argv: list[str] | None = None) -> int:
    from .model import cli
    p = cli(__doc__ or "", shape="tiny", dir_help="cache root parent (local file system)",
            dir_b_help="a second root parent (e.g. a MooseFS mount)")
    p.add_argument("--scenarios", default="queue,sweep,first,hit")
    p.add_argument("--hit-tokens", type=int, default=16000)
    p.add_argument("--convs", type=int, default=8)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--system", type=int, default=1024)
    p.add_argument("--user", type=int, default=256)
    p.add_argument("--answer", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--max-len", type=int, default=16640)
    p.add_argument("--throttle", default="read:delay20@1+",
                   help="fault spec for the throttled root ('' to skip)")
    p.add_argument("--queue-faults", default="",
                   help="fault spec for the queue scenario's yrcache engines (a slow root)")
    p.add_argument("--threads", default="0-1", help="VLLM_CPU_OMP_THREADS_BIND")
    p.add_argument("--json", default="")
    p.add_argument("--quick", action="store_true", help="a smoke run: small and one pass")
    a = p.parse_args(argv)
    if a.quick:
        a.reps, a.convs, a.turns, a.system, a.max_len = 1, 4, 2, 512, 2304
        a.hit_tokens = 1500
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    notes = Notes()
    t0 = time.monotonic()
    ctx = Ctx(a)
    doc: dict[str, Any] = {"config": vars(a), "system": sysinfo(a.dir)}
    want = a.scenarios.split(",")
    if "queue" in want:
        doc["queue"] = queue_scenario(ctx, notes)
        print_queue(doc["queue"], a)
    if "sweep" in want:
        doc["sweep"] = sweep_scenario(ctx, notes)
        print_sweep(doc["sweep"], a)
    if "first" in want:
        doc["first"] = first_scenario(ctx, notes)
        m = doc["first"]["median"]
        print(f"\nvllm serve, first requests after start-up (median of {a.reps} fresh servers "
              f"each; client TTFT of a streamed 600-token completion, s)")
        print(format_table([("system", "<14"), ("first", ">7"), ("second", ">7"),
                            ("start-up", ">9")],
                           [[k, f"{v['first']:.3f}", f"{v['second']:.3f}",
                             f"{v['startup']:.1f}"] for k, v in m.items()], rule=False))
    if "hit" in want:
        doc["hit"] = hit_scenario(ctx, notes)
        print_hit(doc["hit"], a)
    doc["notes"], doc["seconds"] = list(notes), time.monotonic() - t0
    doc["command"] = " ".join(["python -m yrcache.bench.vllm.queued", *(argv or sys.argv[1:])])
    if a.json:
        Path(a.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
