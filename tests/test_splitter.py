# SPDX-License-Identifier: Apache-2.0
"""Property: the alignment splitter covers exactly the requested range, in order, and its direct
pieces are aligned (offset, length) with bounce set exactly when caller memory is misaligned."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from yrcache import _C

ALIGN = 4096


@settings(max_examples=400, deadline=None, derandomize=True)
@given(buf=st.integers(0, 1 << 40), offset=st.integers(0, 1 << 40), length=st.integers(0, 1 << 26),
       chunk=st.integers(1, 1 << 22), direct=st.booleans())
def test_splitter_covers_range_exactly(buf, offset, length, chunk, direct):
    pieces = _C.io.split_request(buf, offset, length, chunk, ALIGN, direct)
    pos = offset
    eff_chunk = max(-(-chunk // ALIGN) * ALIGN, ALIGN)
    for off, n, buf_off, dio, bounce in pieces:
        assert off == pos and n > 0 and n <= eff_chunk
        assert buf_off == off - offset
        if dio:
            assert off % ALIGN == 0 and n % ALIGN == 0
            assert bounce == ((buf + buf_off) % ALIGN != 0)
        else:
            assert not bounce
        pos += n
    assert pos == offset + length
    if not direct:
        assert not any(p[3] for p in pieces)
    else:  # everything aligned that can be goes direct
        direct_bytes = sum(p[1] for p in pieces if p[3])
        lo = -(-offset // ALIGN) * ALIGN
        hi = (offset + length) // ALIGN * ALIGN
        assert direct_bytes == max(0, hi - lo)
