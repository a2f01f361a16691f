# SPDX-License-Identifier: Apache-2.0
"""The CPU copy engine (csrc/copy): gather/scatter of paged and dense KV against numpy references,
with every bound check."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yrcache.cache import copy as cpu_copy
from yrcache.io.engine import HostBuffer

RNG = np.random.default_rng(0)


def paged_layer(num_blocks: int = 32, block_shape: tuple[int, ...] = (2, 16, 4, 8),
                dtype: str = "float16") -> np.ndarray:
    """vLLM-like: [num_blocks, *page] with random contents."""
    a = RNG.integers(0, 2**16, (num_blocks, *block_shape), dtype=np.uint16)
    return a.view(dtype)


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_paged_roundtrip(threads: int) -> None:
    layer = paged_layer()
    page = layer[0].nbytes
    ids = np.array([7, 3, 31, 0, 12], dtype=np.int64)
    staging = HostBuffer(page * len(ids))
    assert cpu_copy.gather_paged(layer, ids, staging, threads=threads) == page * len(ids)
    view = np.frombuffer(staging, dtype=layer.dtype).reshape(len(ids), *layer.shape[1:])
    assert np.array_equal(view.view(np.uint16), layer[ids].view(np.uint16))
    dst = np.zeros_like(layer)
    to = np.array([1, 2, 30, 9, 4])
    cpu_copy.scatter_paged(dst, to, staging, threads=threads)
    assert np.array_equal(dst[to].view(np.uint16), layer[ids].view(np.uint16))
    untouched = np.setdiff1d(np.arange(len(dst)), to)
    assert not dst[untouched].view(np.uint16).any()


def test_paged_with_block_stride() -> None:
    """Blocks that are pages inside a larger per-block record (e.g. a cross-layer tensor)."""
    big = paged_layer(16, (3, 64))            # per block: 3 x 64 halves
    layer = big[:, 1, :]                      # one contiguous 128-byte page per block, stride 384
    ids = np.arange(16)[::-1].copy()
    out = bytearray(128 * 16)
    cpu_copy.gather_paged(layer, ids, out)
    assert bytes(out) == layer[ids].tobytes()


@given(st.lists(st.integers(0, 63), min_size=1, max_size=64, unique=True), st.integers(0, 4))
@settings(max_examples=40, deadline=None)
def test_paged_property(ids: list[int], threads: int) -> None:
    layer = paged_layer(64, (2, 8, 2, 4))
    staging = bytearray(layer[0].nbytes * len(ids))
    cpu_copy.gather_paged(layer, ids, staging, threads=threads)
    dst = np.zeros_like(layer)
    cpu_copy.scatter_paged(dst, ids, staging, threads=threads)
    assert dst[ids].tobytes() == layer[ids].tobytes()


@pytest.mark.parametrize("contig", [True, False])
def test_dense_roundtrip(contig: bool) -> None:
    b, h, s, d = 2, 4, 300, 16
    k = RNG.standard_normal((b, h, s, d)).astype(np.float32)
    if not contig:  # [batch, seq, heads, dim] storage viewed as [batch, heads, seq, dim]
        k = np.ascontiguousarray(k.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    t0, n = 256, 44
    seg = bytearray(cpu_copy.dense_bytes(k, n))
    assert cpu_copy.gather_dense(k, t0, n, seg, batch=1) == len(seg)
    ref = np.ascontiguousarray(k[1, :, t0:t0 + n, :])  # head-major
    assert bytes(seg) == ref.tobytes()
    out = np.zeros_like(k)
    cpu_copy.scatter_dense(out, t0, n, seg, batch=1)
    assert np.array_equal(out[1, :, t0:t0 + n], k[1, :, t0:t0 + n])
    assert not out[0].any() and not out[1, :, :t0].any() and not out[1, :, t0 + n:].any()


@pytest.mark.parametrize("ids, match", [
    ([32], "out of range"), ([-1], "out of range"), ([1, 2, 1], "appears twice"),
])
def test_paged_bad_ids(ids: list[int], match: str) -> None:
    layer = paged_layer()
    staging = bytearray(layer[0].nbytes * len(ids))
    if match != "appears twice":
        with pytest.raises(ValueError, match=match):
            cpu_copy.gather_paged(layer, ids, staging)
    with pytest.raises(ValueError, match=match):
        cpu_copy.scatter_paged(layer, ids, staging)


def test_paged_bad_buffers() -> None:
    layer = paged_layer()
    with pytest.raises(ValueError, match="smaller than"):
        cpu_copy.gather_paged(layer, [1, 2], bytearray(layer[0].nbytes))
    with pytest.raises(ValueError, match="smaller than"):
        cpu_copy.scatter_paged(layer, [1, 2], bytes(layer[0].nbytes))
    with pytest.raises(TypeError, match="integers"):
        cpu_copy.gather_paged(layer, [1.0], bytearray(layer[0].nbytes))
    with pytest.raises(ValueError, match="contiguous page"):
        cpu_copy.gather_paged(layer[:, :, ::2], [0], bytearray(layer[0].nbytes))
    with pytest.raises(TypeError):
        cpu_copy.gather_paged([1, 2, 3], [0], bytearray(8))
    with pytest.raises(ValueError, match="read-only"):
        ro = paged_layer()
        ro.flags.writeable = False
        cpu_copy.scatter_paged(ro, [0], bytes(ro[0].nbytes))


def test_dense_bad_ranges() -> None:
    k = np.zeros((1, 2, 64, 8), np.float16)
    with pytest.raises(ValueError, match="token range"):
        cpu_copy.gather_dense(k, 60, 8, bytearray(1 << 16))
    with pytest.raises(ValueError, match="batch index"):
        cpu_copy.gather_dense(k, 0, 8, bytearray(1 << 16), batch=1)
    with pytest.raises(ValueError, match="too small"):
        cpu_copy.gather_dense(k, 0, 8, bytearray(10))
    with pytest.raises(ValueError, match="head_dim must be contiguous"):
        cpu_copy.gather_dense(np.zeros((1, 2, 64, 16), np.float16)[..., ::2], 0, 8,
                              bytearray(1 << 16))
    with pytest.raises(ValueError, match="batch, heads, seq, head_dim"):
        cpu_copy.gather_dense(np.zeros((2, 64, 8), np.float16), 0, 8, bytearray(1 << 16))
