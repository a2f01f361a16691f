# SPDX-License-Identifier: Apache-2.0
"""``python -m yrcache.bench.vllm_bench``: the serving benchmark in yrcache.bench.vllm.bench."""
import sys

from .vllm.bench import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
