# SPDX-License-Identifier: Apache-2.0
# The two commands of the README:
#   make bench   set everything up (apt packages, .venv, build) and run the bandwidth benchmark
#   make test    set up (idempotent) and run the test suite
BENCH_DIR ?= $(CURDIR)/bench-results
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup bench test clean
setup:
	./scripts/setup.sh

bench: setup
	mkdir -p $(BENCH_DIR)
	.venv/bin/python -m yrcache.bench.io_bench --dir $(BENCH_DIR) \
		--json $(BENCH_DIR)/io_bench.json --plot $(BENCH_DIR)/io_bench.png $(BENCH_ARGS)

test: setup
	.venv/bin/python -m pytest tests --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf build .venv *.egg-info bench-results
