# SPDX-License-Identifier: Apache-2.0
"""Keys and namespaces against the documented spec (docs/keys.md) and its test vectors."""
from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yrcache.store.keys import Namespace, as_token_array, chain_keys, fold_extras, is_hex_digest

from .helpers import REPO

VECTORS = json.loads((REPO / "docs" / "key_vectors.json").read_text())


def _tokens(case: dict) -> list[int]:
    t = case["token_ids"]
    return list(range(*t["range"])) if isinstance(t, dict) else t


def _independent(case: dict) -> tuple[str, str, list[str]]:
    """The spec re-implemented from docs/keys.md with hashlib and struct only."""
    h = lambda b: hashlib.blake2b(b, digest_size=16).digest()  # noqa: E731
    fields = {"block_tokens": 0, "page_bytes": 0, "chunk_tokens": 256, "first_layer": 0,
              "first_kv_head": 0, "salt": "", "extra": {}, "format_version": 1,
              "key_spec_version": 1, **case["namespace"]}
    canon = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    root = nsd = h(b"yrcache/namespace/v1\x00" + canon)
    if case["extras"]:
        parts = b"yrcache/extra/v1\x00" + nsd
        for name in sorted(case["extras"]):
            n, v = name.encode(), case["extras"][name].encode()
            parts += struct.pack("<I", len(n)) + n + struct.pack("<I", len(v)) + v
        root = h(parts)
    toks, c = _tokens(case), fields["chunk_tokens"]
    keys, prev = [], root
    for i in range(len(toks) // c):
        prev = h(prev + struct.pack(f"<{c}I", *toks[i * c:(i + 1) * c]))
        keys.append(prev.hex())
    return nsd.hex(), root.hex(), keys


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"][:30])
def test_vectors(case: dict) -> None:
    ns = Namespace(**case["namespace"])
    assert ns.canonical().decode() == case["canonical"]
    assert ns.hex == case["namespace_digest"]
    root = fold_extras(ns.digest, case["extras"])
    assert root.hex() == case["root"]
    assert [k.hex() for k in chain_keys(root, _tokens(case), ns.chunk_tokens)] == case["keys"]
    assert _independent(case) == (case["namespace_digest"], case["root"], case["keys"])


def test_deterministic_across_processes() -> None:
    """No per-process seed: a child with a different PYTHONHASHSEED derives the same keys."""
    case = VECTORS["cases"][0]
    code = ("import json,sys; from yrcache.store.keys import *; c=json.loads(sys.argv[1]);"
            "ns=Namespace(**c['namespace']);"
            "print(chain_keys(ns.digest, range(1000), 256)[-1].hex())")
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code, json.dumps(case)], capture_output=True,
                             text=True, check=True, cwd=REPO, env={"PYTHONHASHSEED": seed,
                                                                  "PYTHONPATH": str(REPO)})
        assert out.stdout.strip() == case["keys"][-1]


def _ns(**kw: object) -> Namespace:
    base = dict(model="m", dtype="bfloat16", num_layers=4, kv_heads=2, head_size=64,
                layout="vllm-cpu-paged", block_tokens=16, page_bytes=4096)
    base.update(kw)
    return Namespace(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("change", [
    {"model": "m2"}, {"dtype": "float16"}, {"num_layers": 5}, {"kv_heads": 1}, {"head_size": 128},
    {"layout": "vllm-cuda-paged"}, {"block_tokens": 32}, {"page_bytes": 8192},
    {"chunk_tokens": 512}, {"first_layer": 16}, {"first_kv_head": 1}, {"salt": "tenant"},
    {"extra": {"mla": "1"}}, {"format_version": 2}, {"key_spec_version": 2},
])
def test_every_field_changes_the_namespace(change: dict) -> None:
    assert _ns(**change).digest != _ns().digest


def test_extras_fold_and_order() -> None:
    d = _ns().digest
    assert fold_extras(d, None) == d and fold_extras(d, {}) == d
    a = fold_extras(d, {"lora": "x", "mm": b"\x01\x02"})
    assert a == fold_extras(d, {"mm": b"\x01\x02", "lora": "x"})  # order-independent
    assert a != fold_extras(d, {"lora": "x"})
    # length prefixes: moving bytes between name and value changes the result
    assert fold_extras(d, {"ab": "c"}) != fold_extras(d, {"a": "bc"})


def test_chain_properties() -> None:
    d = _ns().digest
    rng = np.random.default_rng(1)
    toks = rng.integers(0, 2**32, 256 * 5, dtype=np.uint64)
    keys = chain_keys(d, toks, 256)
    assert len(keys) == 5 and len(set(keys)) == 5
    assert chain_keys(d, toks[:256 * 3 + 17], 256) == keys[:3]      # prefixes share keys
    assert chain_keys(d, list(map(int, toks)), 256) == keys          # list == array
    t2 = toks.copy()
    t2[300] ^= 1                                                     # a change in chunk 1
    k2 = chain_keys(d, t2, 256)
    assert k2[0] == keys[0] and all(a != b for a, b in zip(k2[1:], keys[1:]))
    assert chain_keys(d, toks, 256, max_chunks=2) == keys[:2]
    assert chain_keys(d, [], 256) == []
    assert all(is_hex_digest(k.hex()) for k in keys)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=64), st.integers(1, 16))
@settings(max_examples=60, deadline=None)
def test_chain_matches_spec_property(toks: list[int], chunk: int) -> None:
    d = hashlib.blake2b(b"x", digest_size=16).digest()
    prev, want = d, []
    for i in range(len(toks) // chunk):
        prev = hashlib.blake2b(prev + struct.pack(f"<{chunk}I", *toks[i * chunk:(i + 1) * chunk]),
                               digest_size=16).digest()
        want.append(prev)
    assert chain_keys(d, toks, chunk) == want


@pytest.mark.parametrize("bad, exc", [
    ([-1, 2], ValueError), ([2**32], ValueError), ([[1, 2]], ValueError), ([1.5], TypeError),
])
def test_bad_tokens(bad: list, exc: type) -> None:
    with pytest.raises(exc):
        as_token_array(bad)


@pytest.mark.parametrize("kw", [
    {"model": ""}, {"num_layers": 0}, {"kv_heads": -1}, {"head_size": True}, {"chunk_tokens": 100},
    {"page_bytes": -1}, {"extra": {"a": 1}},
])
def test_bad_namespace(kw: dict) -> None:
    with pytest.raises((TypeError, ValueError)):  # TypeError for a wrong type (bool, int values)
        _ns(**kw)


def test_bad_root() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        chain_keys(b"short", [1, 2], 1)
    with pytest.raises(ValueError):
        chain_keys(_ns().digest, [1], 0)


def test_namespace_json_roundtrip() -> None:
    ns = _ns(salt="s", extra={"b": "2", "a": "1"})
    back = Namespace.from_json(ns.to_json())
    assert back == ns and back.digest == ns.digest
