# SPDX-License-Identifier: Apache-2.0
"""What block-granular hits cost in files: chunks plus one-block tails (the connector's default)
against one-block chunks everywhere (the other way to end hits on vLLM's block) and against
chunks alone (hits end on a chunk: the connector before tails), on real files.

A conversation grows turn by turn (a prompt, then +out generated and +user new tokens per turn);
after each turn the KV of its whole blocks is stored the way the connector stores it. Reported
per layout: objects written, bytes written, lookup keys (one existence check each) and load
objects for the next turn's hit, and the time of the store, the hit's lookup (a fresh Store,
empty index, from --dir-b when given: the other mount of a shared file system) and its load.
Medians of --reps interleaved runs.

    python -m yrcache.bench.tails --dir /mnt/a/bench --dir-b /mnt/b/bench --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from ..store.keys import Namespace, chain_keys
from ..store.store import Store
from .common import format_table, fs_of
from .vllm.model import SHAPES, kv_bytes_per_token

#: layout -> (objects of whole chunks (else of one block), tails on): the connector's default;
#: the connector before tails (hits end on chunks: the control); one-block chunks everywhere
LAYOUTS = {"chunks+tails": (True, True), "chunks only": (True, False),
           "block chunks": (False, False)}


def _ns(layers: int, tokens: int) -> Namespace:
    return Namespace(model="bench-tails", dtype="bfloat16", num_layers=layers,
                     kv_heads=1, head_size=64, chunk_tokens=tokens, layout="bench")


def _objects(tokens: list[int], kv: int, size: int, block: int, tails: bool
             ) -> list[tuple[int, bytes, bytes, int]]:
    """(tokens, key, parent, index) of every object stored for the KV of ``tokens[:kv]``:
    objects of ``size`` tokens, then (``tails``) one per block after the last of them."""
    root = b"\0" * 16
    n_blocks = kv // block
    keys = chain_keys(root, tokens, size, max_chunks=n_blocks * block // size)
    out = [(size, k, keys[i - 1] if i else root, i) for i, k in enumerate(keys)]
    if tails:
        full = len(keys)
        parent = keys[-1] if keys else root
        tail = chain_keys(parent, tokens[full * size:n_blocks * block], block)
        out += [(block, k, tail[i - 1] if i else parent, i) for i, k in enumerate(tail)]
    return out


class Layout:
    def __init__(self, name: str, d: str, d_b: str, layers: int, per_token: int, chunk: int,
                 block: int) -> None:
        chunks, self.tails = LAYOUTS[name]
        self.name, self.d, self.d_b, self.layers, self.per_token = name, d, d_b, layers, per_token
        self.chunk, self.block = (chunk if chunks else block), block
        sizes = {self.chunk, block} if self.tails else {self.chunk}
        self.stores = {t: Store(d, _ns(layers, t), janitor_period=0) for t in sizes}
        self.written = self.bytes = 0
        self.store_s = 0.0

    def seg(self, tokens: int) -> int:
        return tokens * self.per_token // self.layers

    def store_turn(self, tokens: list[int], kv: int) -> None:
        t0 = time.perf_counter()
        futs = []
        for n, key, parent, i in _objects(tokens, kv, self.chunk, self.block, self.tails):
            s = self.stores[n]
            if s.exists(key):
                continue
            segs = [np.random.bytes(self.seg(n)) for _ in range(self.layers)]
            futs.append(s.put(key, segs, parent=parent, chunk_index=i, token_count=n,
                              dtype="bfloat16", shape=[self.seg(n)]))
            self.written += 1
            self.bytes += self.seg(n) * self.layers
        assert all(f.result(timeout=600) for f in futs)
        self.store_s += time.perf_counter() - t0

    def hit(self, tokens: list[int], limit: int) -> dict[str, Any]:
        """The next turn's hit from ``d_b``, asked as the connector asks (fresh stores, empty
        index): the chunks up to ``limit``, then, where they end, a tail of at most
        chunk/block - 1 blocks (two rounds); or the blocks up to ``limit`` (one). Then loaded."""
        fresh = {t: Store(self.d_b, _ns(self.layers, t), janitor_period=0) for t in self.stores}
        root = b"\0" * 16
        try:
            t0 = time.perf_counter()
            n = min(-(-limit // self.chunk), len(tokens) // self.chunk)
            keys = chain_keys(root, tokens, self.chunk, max_chunks=n)
            h = fresh[self.chunk].lookup(keys)
            objs = [(self.chunk, k) for k in keys[:h]]
            room = min(self.chunk // self.block - 1, max(0, limit - h * self.chunk)
                       // self.block) if self.tails else 0
            asked = n + room
            if room:
                a = h * self.chunk
                tail = chain_keys(keys[h - 1] if h else root, tokens[a:a + room * self.block],
                                  self.block)
                objs += [(self.block, k) for k in tail[:fresh[self.block].lookup(tail)]]
            t1 = time.perf_counter()
            futs = [fresh[n].get(key, [bytearray(self.seg(n)) for _ in range(self.layers)])
                    for n, key in objs]
            ok = all(f.result(timeout=600) for f in futs)
            t2 = time.perf_counter()
        finally:
            for st in fresh.values():
                st.close()
        return {"lookup_keys": asked, "objects": len(objs), "ok": ok,
                "hit_tokens": min(sum(n for n, _ in objs), limit),
                "lookup_ms": (t1 - t0) * 1e3, "load_ms": (t2 - t1) * 1e3,
                "bytes": sum(self.seg(n) * self.layers for n, _ in objs)}

    def close(self) -> None:
        for s in self.stores.values():
            s.close()


def conversation(first: int, turns: int, out: int, user: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    conv = [list(rng.integers(0, 32000, first))]
    for _ in range(turns):
        conv.append(conv[-1] + list(rng.integers(0, 32000, out + user)))
    return conv


def run(a: argparse.Namespace) -> dict[str, Any]:
    per_token, layers = kv_bytes_per_token(a.model), SHAPES[a.model]["num_hidden_layers"]
    conv = conversation(a.first, a.turns, a.out, a.user, 1)
    res: dict[str, list[dict[str, Any]]] = {n: [] for n in LAYOUTS}
    for rep in range(a.reps):
        for name in (LAYOUTS if rep % 2 == 0 else list(LAYOUTS)[::-1]):   # interleaved
            base = tempfile.mkdtemp(prefix="tails-", dir=a.dir)
            base_b = os.path.join(a.dir_b, os.path.basename(base)) if a.dir_b else base
            lay = Layout(name, base, base_b, layers, per_token, a.chunk, a.block)
            try:
                for t in range(a.turns):
                    kv = len(conv[t]) + a.out - 1   # the last sampled token has no KV
                    lay.store_turn(conv[t + 1], kv)
                nxt = conv[a.turns]
                h = lay.hit(nxt, (len(nxt) - 1) // a.block * a.block)
                h.update(objects_written=lay.written, bytes_written=lay.bytes,
                         store_ms_per_turn=lay.store_s * 1e3 / a.turns)
                res[name].append(h)
            finally:
                lay.close()
                shutil.rmtree(base, ignore_errors=True)
    summary = {}
    for name, runs in res.items():
        summary[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]
                         if k != "ok"} | {"all_ok": all(r["ok"] for r in runs)}
    return {"bench": "yrcache.bench.tails", "model": a.model, "chunk": a.chunk,
            "block": a.block, "turns": a.turns, "first": a.first, "out": a.out, "user": a.user,
            "reps": a.reps, "fs": fs_of(a.dir), "fs_b": fs_of(a.dir_b) if a.dir_b else None,
            "summary": summary, "runs": res}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m yrcache.bench.tails", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=".", help="where objects are written")
    p.add_argument("--dir-b", help="the same directory through another mount (hit side)")
    p.add_argument("--model", default="100m", choices=sorted(SHAPES))
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--block", type=int, default=128, help="128: vLLM CPU; 16: vLLM CUDA")
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--first", type=int, default=700, help="first prompt's tokens")
    p.add_argument("--out", type=int, default=24, help="generated tokens per turn")
    p.add_argument("--user", type=int, default=200, help="new user tokens per turn")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    if a.chunk % a.block or a.chunk <= a.block:
        p.error("--chunk must be a multiple of --block, larger than it")
    r = run(a)
    cols = [("layout", "<14"), ("objects written", ">16"), ("MiB written", ">12"),
            ("store ms/turn", ">14"), ("hit tokens", ">11"), ("lookup keys", ">12"),
            ("hit objects", ">12"), ("lookup ms", ">10"), ("load ms", ">9"),
            ("load GB/s", ">10")]
    rows = []
    for name, s in r["summary"].items():
        rows.append([name, f"{s['objects_written']:.0f}", f"{s['bytes_written'] / 2**20:.1f}",
                     f"{s['store_ms_per_turn']:.1f}", f"{s['hit_tokens']:.0f}",
                     f"{s['lookup_keys']:.0f}",
                     f"{s['objects']:.0f}", f"{s['lookup_ms']:.2f}", f"{s['load_ms']:.1f}",
                     f"{s['bytes'] / s['load_ms'] / 1e6:.2f}" if s["load_ms"] else "-"])
    print(f"{a.model}: chunk {a.chunk}, block {a.block}, {a.turns} turns, {r['fs']}, "
          f"medians of {a.reps}")
    print(format_table(cols, rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0 if all(s["all_ok"] for s in r["summary"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
