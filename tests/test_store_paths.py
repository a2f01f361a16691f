# SPDX-License-Identifier: Apache-2.0
"""The object path scheme: yrcache/store/paths.py and csrc/store/paths.h agree."""
import os

import pytest

from yrcache._native import _C
from yrcache.store import paths


def test_python_and_native_object_paths_agree():
    keys = [os.urandom(16) for _ in range(64)] + [bytes(16), b"\xff" * 16]
    native = _C.store.object_relpaths(b"".join(keys))
    assert native == [paths.object_relpath(k.hex()) for k in keys]
    k = keys[0].hex()
    assert native[0] == f"{k[:2]}/{k[2:4]}/{k}.kv"


def test_native_object_paths_refuse_partial_keys():
    with pytest.raises(ValueError):
        _C.store.object_relpaths(bytes(17))


def test_object_location_and_key_round_trip():
    k = os.urandom(16).hex()
    shard, name = paths.object_location(k)
    assert paths.object_key(shard, name) == k
    assert paths.object_path("a" * 32, k) == f"{'a' * 32}/{shard}/{name}"
    assert paths.object_key("00/00", name) is None or shard == "00/00"
    for bad in (k + ".tmp", k.upper() + ".kv", k + "\n.kv", k[:31] + ".kv", ".kv"):
        assert paths.object_key(shard, bad) is None
    with pytest.raises(ValueError):
        paths.object_location(k + "\n")
