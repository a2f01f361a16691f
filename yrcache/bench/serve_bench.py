# SPDX-License-Identifier: Apache-2.0
"""``python -m yrcache.bench.serve_bench``: ``vllm serve`` under many users (see .vllm.serve)."""
import sys

from .vllm.serve import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
