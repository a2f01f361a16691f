# SPDX-License-Identifier: Apache-2.0
"""The GPU data path on a real card: copy engine, file path, overlap with compute, TTFT.

One module per phase (copy, file, overlap, serve), what they share (harness) and the driver;
``python -m yrcache.bench.gpu_bench --help`` for the options."""
from .driver import main

__all__ = ["main"]
