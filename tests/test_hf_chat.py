# SPDX-License-Identifier: Apache-2.0
"""The Hugging Face serving loop (yrcache/examples/hf_chat.py) with a tiny random-weight Llama on
the CPU: KV loaded from the cache gives bit-identical logits to the same loop holding the prefix KV
in memory, and greedy tokens equal to a full recompute (float32)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from .helpers import require

try:
    import torch
    import transformers  # noqa: F401
except ImportError:  # the `hf` extra
    torch = None


@pytest.fixture
def model():
    require(torch is not None, "torch and transformers are not installed (pip install .[hf])")
    from yrcache.examples.hf_chat import build_model
    torch.set_num_threads(1)
    return build_model("tiny", "float32", vocab=1000)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_loaded_kv_matches_memory_and_recompute(model, data_dir: Path, mode: str) -> None:
    import yrcache
    from yrcache.examples.hf_chat import ChatLoop, build_tokenizer, kv_layout, synthetic_turns
    layout = kv_layout(model, "float32")
    ns = layout.namespace("tiny-random-llama", chunk_tokens=16)
    turns = synthetic_turns(build_tokenizer(1000), [40, 23, 30])

    with yrcache.Cache(data_dir / "root", ns, layout, mode=mode, staging_bytes=1 << 20,
                       janitor_period=0) as cache:
        cached = ChatLoop(model, cache)
        memory = ChatLoop(model)
        for i, new in enumerate(turns):
            kv_before = copy.deepcopy(memory.last_kv) if i else None
            t = cached.turn(new, 3)
            cache.store_.flush()
            if i == 0:
                assert t.prefix_hit_tokens == 0
                m = memory.turn(new, 3)
            else:
                assert t.prefix_hit_tokens > 0 and t.prefix_hit_tokens % 16 == 0
                # the same prefix, held in memory (crop takes -tokens to drop in transformers 5)
                kv_before.crop(t.prefix_hit_tokens - kv_before.get_seq_length())
                memory.ids = cached.ids[:len(cached.ids) - len(new) - 3]
                m = memory.turn(new, 3, memory_kv=kv_before)
                assert torch.equal(t.first_logits, m.first_logits)   # bit-identical
            assert t.tokens == m.tokens
            # a full recompute of the whole conversation agrees on the greedy tokens
            full = ChatLoop(model)
            full.ids = cached.ids[:len(cached.ids) - len(new) - 3]
            f = full.turn(new, 3, memory_kv=None) if i == 0 else \
                full.turn(new, 3, memory_kv=_empty())
            assert f.tokens == t.tokens
            full.close()
        s = cache.stats()
        assert s["loads"] == 2 and s["load_partial"] == 0
        cached.close()
        memory.close()


def _empty():
    from yrcache.examples.hf_chat import _EmptyKV
    return _EmptyKV()


def test_partial_load_recomputes(model, data_dir: Path) -> None:
    import os

    import yrcache
    from yrcache.examples.hf_chat import ChatLoop, kv_layout
    layout = kv_layout(model, "float32")
    ns = layout.namespace("tiny-random-llama", chunk_tokens=16)
    rng = np.random.default_rng(1)
    with yrcache.Cache(data_dir / "root", ns, layout, staging_bytes=1 << 20,
                       janitor_period=0, handle_ttl=0) as cache:
        loop = ChatLoop(model, cache)
        loop.turn(rng.integers(0, 1000, 50).tolist(), 2)
        cache.store_.flush()
        keys = cache.keys(loop.ids)
        real_lookup = cache.lookup
        before = real_lookup(loop.ids)        # what lookup says; then another node evicts chunk 1

        def stale_lookup(ids, **kw):
            os.unlink(cache.store_.path_of(keys[1]))
            cache.lookup = real_lookup
            return min(before, real_lookup(ids, **kw) or before)

        cache.lookup = stale_lookup
        ref = ChatLoop(model)
        ref.ids = list(loop.ids)
        new = rng.integers(0, 1000, 10).tolist()
        t = loop.turn(new, 2)
        r = ref.turn(new, 2, memory_kv=_empty())
        assert cache.stats()["load_partial"] == 1   # the load came back partial...
        assert t.tokens == r.tokens                 # ...and the turn recomputed: same tokens
        loop.close()
        ref.close()
