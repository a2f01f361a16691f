#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Multi-turn serving on real vLLM (native vs yrcache sync vs async): see
``python bench/vllm_bench.py --help``.

Thin wrapper around :mod:`yrcache.bench.vllm_bench` (also ``python -m yrcache.bench.vllm_bench``).
Prefers the working tree's package when its native extension has been built in place.
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if any((_ROOT / "yrcache").glob("_C*.so")):
    sys.path.insert(0, str(_ROOT))

from yrcache.bench.vllm_bench import main

if __name__ == "__main__":
    sys.exit(main())
