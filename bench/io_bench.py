#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Bandwidth of yrcache's I/O engine vs fio: see ``python bench/io_bench.py --help``.

Thin wrapper around :mod:`yrcache.bench.io_bench` (also ``python -m yrcache.bench.io_bench``).
Prefers the working tree's package when its native extension has been built in place.
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if any((_ROOT / "yrcache").glob("_C*.so")):
    sys.path.insert(0, str(_ROOT))

from yrcache.bench.io_bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
