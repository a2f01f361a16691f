# SPDX-License-Identifier: Apache-2.0
"""Random-weight Qwen2 checkpoints that vLLM can load, built locally (nothing is downloaded).

Prompts are token ids and the engines run with ``skip_tokenizer_init=True``, so no tokenizer is
needed. ``initializer_range=0.1`` keeps greedy outputs context-dependent (the default 0.02 makes a
random model repeat one token, which would hide a wrong KV).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: name -> Qwen2 shape (hidden, layers, heads, kv heads, head_dim); KV bytes/token in bf16 =
#: 2 * layers * kv_heads * head_dim * 2
SHAPES: dict[str, dict[str, int]] = {
    # correctness tests: a 1000-token request takes ~50 ms on one core
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    # ~100M: prefill ~0.3-0.7 ms/token on 2 cores, 8 KiB KV/token
    "100m": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=64),
    # ~400M: prefill ~1-2 ms/token on 2 cores, 16 KiB KV/token
    "400m": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8,
                 num_attention_heads=16, num_key_value_heads=4, head_dim=128),
}
VOCAB = 4096


def build(path: str | os.PathLike[str], shape: str = "tiny", *, seed: int = 0,
          max_positions: int = 32768) -> Path:
    """Write a bf16 random-weight Qwen2 checkpoint to ``path`` (reused if already there)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out = Path(path)
    stamp = out / "yrcache_model.json"
    want = {"shape": shape, "seed": seed, "max_positions": max_positions, **SHAPES[shape]}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return out
    cfg = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=max_positions,
                      tie_word_embeddings=True, initializer_range=0.1,
                      torch_dtype="bfloat16", **SHAPES[shape])
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    stamp.write_text(json.dumps(want))
    return out


def kv_bytes_per_token(shape: str) -> int:
    s = SHAPES[shape]
    return 2 * s["num_hidden_layers"] * s["num_key_value_heads"] * s["head_dim"] * 2


def cli(doc: str, *, shape: str, dir_help: str, dir_b_help: str) -> argparse.ArgumentParser:
    """The arguments every vLLM benchmark takes: where roots and models go, the model shape."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help=dir_help)
    p.add_argument("--dir-b", default="", help=dir_b_help)
    p.add_argument("--model-dir", default=os.path.join(tempfile.gettempdir(), "yrcache-models"))
    p.add_argument("--shape", default=shape, help="model shape (yrcache.bench.vllm.model)")
    return p


def engine_args(model: str | os.PathLike[str], **kw: Any) -> dict[str, Any]:
    """LLM(...) arguments for these checkpoints on vLLM's CPU backend."""
    args: dict[str, Any] = dict(model=str(model), dtype="bfloat16", skip_tokenizer_init=True,
                                enforce_eager=True, max_model_len=16384, seed=0)
    args.update(kw)
    return args


__all__ = ["SHAPES", "VOCAB", "build", "cli", "engine_args", "kv_bytes_per_token"]
