# SPDX-License-Identifier: Apache-2.0
"""A minimal multi-turn chat serving loop on Hugging Face transformers with yrcache.

Each turn: look up the conversation prefix, load its KV through ``Cache.load`` (layer by layer: a
forward pre-hook on decoder layer i waits only for layer i), prefill only the new tokens, generate
greedily, and store the conversation's KV for the next turn. The model is built locally with random
weights (no downloads); token ids are synthetic (a tokenizer does not change what is cached).

    python -m yrcache.examples.hf_chat --shape 400m --turns 4 --first-tokens 4096 \\
        --turn-tokens 128 --modes recompute,sync,async --json ttft.json --plot ttft.png
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SHAPES: dict[str, dict[str, int]] = {
    # hidden, intermediate, layers, heads, kv_heads
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
    "400m": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=8),
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8),
}


def build_model(shape: str = "tiny", dtype: str = "float32", seed: int = 0,
                vocab: int = 32000) -> Any:
    """A random-weight Llama of the given shape (built locally, nothing downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, max_position_embeddings=1 << 17, **SHAPES[shape])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).eval()
    return model


def build_tokenizer(vocab: int, seed: int = 0) -> Any:
    """A word-level tokenizer built locally with the tokenizers library (no downloads): words
    "w0".."w{vocab-2}" plus [UNK]. Turns are sentences of such words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {f"w{i}": i for i in range(vocab - 1)}
    words["[UNK]"] = vocab - 1
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def synthetic_turns(tok: Any, sizes: list[int], seed: int = 0) -> list[list[int]]:
    """Token ids of one conversation's user turns: random sentences, encoded by ``tok``."""
    rng = np.random.default_rng(seed)
    vocab = tok.get_vocab_size()
    texts = [" ".join(f"w{w}" for w in rng.integers(0, vocab - 1, n)) for n in sizes]
    return [tok.encode(t).ids for t in texts]


def kv_layout(model: Any, dtype: str) -> Any:
    from yrcache.cache.layout import KVLayout
    c = model.config
    return KVLayout.dense(num_layers=c.num_hidden_layers, dtype=dtype,
                          kv_heads=c.num_key_value_heads,
                          head_size=c.hidden_size // c.num_attention_heads)


@dataclass
class Turn:
    ttft_s: float
    prefix_hit_tokens: int
    prefill_tokens: int
    load_wait_s: float            # compute time spent waiting on loads (sum of per-layer waits)
    first_logits: Any = field(repr=False, default=None)
    tokens: list[int] = field(default_factory=list)


class ChatLoop:
    """One conversation served by ``model`` with an optional yrcache ``cache``."""

    def __init__(self, model: Any, cache: Any | None = None) -> None:
        global _CACHE_KW
        _CACHE_KW = _CACHE_KW or _cache_kw()
        self.model, self.cache = model, cache
        self.ids: list[int] = []
        self._load: Any = None
        self._wait = 0.0
        self._hooks = [layer.register_forward_pre_hook(self._pre_hook(i))
                       for i, layer in enumerate(model.model.layers)]

    def _pre_hook(self, i: int) -> Any:
        def hook(_module: Any, _args: Any) -> None:
            if self._load is not None:
                t = time.perf_counter()
                self._load.layer(i).result()
                self._wait += time.perf_counter() - t
        return hook

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def turn(self, new_ids: list[int], gen_tokens: int, *, memory_kv: Any = None) -> Turn:
        """Serve one turn: the conversation so far plus ``new_ids``, then ``gen_tokens`` greedy
        tokens. ``memory_kv`` (for tests): a DynamicCache holding the prefix KV in memory."""
        import torch
        from transformers import DynamicCache
        t0 = time.perf_counter()
        ids = self.ids + list(new_ids)
        self._wait, self._load, hit = 0.0, None, 0
        past = None
        if isinstance(memory_kv, _EmptyKV):
            pass
        elif memory_kv is not None:
            hit, past = memory_kv.get_seq_length(), memory_kv
        elif self.cache is not None:
            chunk = self.cache.chunk_tokens
            hit = min(self.cache.lookup(ids), (len(ids) - 1) // chunk * chunk)
            if hit:
                cfg = self.model.config
                head_dim = cfg.hidden_size // cfg.num_attention_heads
                shape = (1, cfg.num_key_value_heads, hit, head_dim)
                dt, dev = self.model.dtype, self.model.device
                past = DynamicCache(ddp_cache_data=[(torch.empty(shape, dtype=dt, device=dev),
                                                     torch.empty(shape, dtype=dt, device=dev))
                                                    for _ in range(cfg.num_hidden_layers)])
                kv = [(layer.keys, layer.values) for layer in past.layers]
                t_load = time.perf_counter()
                self._load = self.cache.load(ids[:hit], kv)   # sync mode: complete on return
                if self.cache.mode == "sync":
                    self._wait = time.perf_counter() - t_load
        with torch.no_grad():
            # async: the pre-hook of decoder layer i waits for layer i only
            out = self.model(torch.tensor([ids[hit:]], device=self.model.device),
                             **{_CACHE_KW: past}, use_cache=True)
            if self._load is not None:
                r = self._load.result()
                if r.tokens < hit:  # a partial load: recompute from the first missing chunk
                    self._load = None
                    return self._recompute_from(ids, r.tokens, gen_tokens, t0)
            logits = out.logits[0, -1]
            tok = int(torch.argmax(logits))
            ttft = time.perf_counter() - t0
            self._load = None
            gen, pkv = [tok], _cache_of(out)
            for _ in range(gen_tokens - 1):
                o = self.model(torch.tensor([[gen[-1]]], device=self.model.device),
                               **{_CACHE_KW: pkv}, use_cache=True)
                pkv = _cache_of(o)
                gen.append(int(torch.argmax(o.logits[0, -1])))
        self.ids = ids + gen
        if self.cache is not None:  # the KV of every token but the last generated one
            n = pkv.get_seq_length()
            self.cache.store(self.ids[:n], [(layer.keys, layer.values) for layer in pkv.layers])
        self.last_kv = pkv
        return Turn(ttft, hit, len(ids) - hit, self._wait, logits.clone(), gen)

    def _recompute_from(self, ids: list[int], n: int, gen_tokens: int, t0: float) -> Turn:
        """A partial load (a chunk missing or corrupt): the prefill above used KV that is not all
        in place, so this turn is recomputed from scratch (a finer recovery would re-prefill from
        token n); its KV is stored again."""
        self.ids = []
        t = self.turn(ids, gen_tokens, memory_kv=_EmptyKV())
        t.ttft_s = time.perf_counter() - t0
        return t


def _cache_kw() -> str:
    """transformers 5 renamed `past_key_values` to `cache` (the old name warns, then goes)."""
    import inspect

    from transformers import LlamaForCausalLM
    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters \
        else "past_key_values"


def _cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


_CACHE_KW = ""


class _EmptyKV:
    """memory_kv for a turn served without any prefix KV (a recompute)."""


# ------------------------------------------------------------------------------------------------
def run_benchmark(a: argparse.Namespace) -> dict[str, Any]:
    """The same conversation served three ways, interleaved turn by turn (recompute, sync, async
    each serve turn i before any serves turn i+1), so that drift on a shared machine hits all
    modes alike."""
    import shutil

    import torch

    import yrcache
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    model = build_model(a.shape, a.dtype)
    layout = kv_layout(model, a.dtype)
    ns = layout.namespace(f"random-llama-{a.shape}-seed0", chunk_tokens=a.chunk_tokens)
    sizes = [a.first_tokens or a.turn_tokens] + [a.turn_tokens] * (a.turns - 1)
    turns = synthetic_turns(build_tokenizer(model.config.vocab_size), sizes)
    modes = a.modes.split(",")
    roots, loops, caches = {}, {}, {}
    for mode in modes:
        roots[mode] = tempfile.mkdtemp(prefix=f"hfchat-{mode}-", dir=a.dir)
        caches[mode] = None if mode == "recompute" else yrcache.Cache(
            roots[mode], ns, layout, mode=mode, staging_bytes=a.staging_mib << 20,
            janitor_period=0)
        loops[mode] = ChatLoop(model, caches[mode])
    rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    loop_modes = modes
    for i, new in enumerate(turns):
        for mode in loop_modes:
            cache = caches[mode]
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t = loops[mode].turn(new, a.gen)
            if cache is not None:
                cache.store_.flush()  # this turn's writes end before the next mode's turn
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            row = {k: v for k, v in asdict(t).items() if k not in ("first_logits", "tokens")}
            row["turn"] = i
            row["cpu_s"] = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
            rows[mode].append(row)
            print(f"{mode:>9} turn {i}: ttft {t.ttft_s * 1e3:8.1f} ms  hit {t.prefix_hit_tokens:6d}"
                  f"  prefill {t.prefill_tokens:6d}  load wait {t.load_wait_s * 1e3:7.1f} ms",
                  file=sys.stderr)
        loop_modes = loop_modes[1:] + loop_modes[:1]  # rotate who goes first
    for mode in modes:
        loops[mode].close()
        if caches[mode] is not None:
            caches[mode].close()
        shutil.rmtree(roots[mode], ignore_errors=True)
    return {"shape": a.shape, "dtype": a.dtype, "first_tokens": sizes[0],
            "turn_tokens": a.turn_tokens, "turns": a.turns, "gen": a.gen,
            "chunk_tokens": a.chunk_tokens, "threads": torch.get_num_threads(),
            "interleaved": True, "results": rows}


def print_table(doc: dict[str, Any]) -> None:
    modes = list(doc["results"])
    print(f"per-turn TTFT (ms), {doc['shape']} {doc['dtype']}, first turn {doc['first_tokens']} "
          f"tokens, then {doc['turn_tokens']} new tokens per turn")
    print("turn " + "".join(f"{m:>12}" for m in modes) +
          "".join(f"{'wait ' + m:>14}" for m in modes if m != "recompute"))
    for i in range(doc["turns"]):
        cells = [doc["results"][m][i] for m in modes]
        print(f"{i:>4} " + "".join(f"{c['ttft_s'] * 1e3:>12.1f}" for c in cells) +
              "".join(f"{c['load_wait_s'] * 1e3:>14.1f}" for m, c in zip(modes, cells)
                      if m != "recompute"))
    if "recompute" in modes:
        for m in modes:
            if m == "recompute":
                continue
            sp = [doc["results"]["recompute"][i]["ttft_s"] / doc["results"][m][i]["ttft_s"]
                  for i in range(1, doc["turns"])]
            if sp:
                print(f"hit turns: {m} is {statistics.median(sp):.1f}x faster than recompute "
                      "(median)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="400m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--first-tokens", type=int, default=4096,
                   help="tokens of the first turn (a system prompt or document; 0: --turn-tokens)")
    p.add_argument("--turn-tokens", type=int, default=128, help="new tokens of every later turn")
    p.add_argument("--gen", type=int, default=4)
    p.add_argument("--chunk-tokens", type=int, default=256)
    p.add_argument("--modes", default="recompute,sync,async")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--staging-mib", type=int, default=512)
    p.add_argument("--dir", default=None)
    p.add_argument("--json")
    p.add_argument("--plot")
    a = p.parse_args(argv)
    doc = run_benchmark(a)
    print_table(doc)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=1)
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for m, rows in doc["results"].items():
            ax.plot([r["turn"] for r in rows], [r["ttft_s"] * 1e3 for r in rows], marker="o",
                    label=m)
        ax.set_xlabel("turn")
        ax.set_ylabel("TTFT (ms)")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
