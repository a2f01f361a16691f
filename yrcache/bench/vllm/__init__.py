# SPDX-License-Identifier: Apache-2.0
"""Serving on real vLLM: the benchmark (bench), one engine per process (engine) and the
random-weight model it serves (model). ``python -m yrcache.bench.vllm_bench --help``."""
