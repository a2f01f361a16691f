# SPDX-License-Identifier: Apache-2.0
# The two commands of the README:
#   make bench   set everything up (apt packages, .venv, build) and run the bandwidth benchmark
#   make test    set up (idempotent) and run the test suite
# and: make bench-store   the object store benchmark (vs fio) on $(BENCH_DIR), and on the MooseFS
#                         mounts A:B of /tmp/yrcache-mfs/mounts when scripts/mfs_up.sh started them
#      make bench-vllm    multi-turn TTFT on real vLLM: native vs yrcache sync vs async; then a
#                         queue of conversations (read-ahead on/off), load-or-recompute against
#                         fixed policies over hit lengths, the first request, hits with stores
#                         in flight (yrcache.bench.vllm.queued)
BENCH_DIR ?= $(CURDIR)/bench-results
BENCH_ARGS ?=
QUEUED_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup bench bench-store bench-vllm bench-serve lint test clean
setup:
	./scripts/setup.sh

bench: setup
	mkdir -p $(BENCH_DIR)
	.venv/bin/python -m yrcache.bench.io_bench --dir $(BENCH_DIR) \
		--json $(BENCH_DIR)/io_bench.json --plot $(BENCH_DIR)/io_bench.png $(BENCH_ARGS)

MFS_MOUNTS ?= /tmp/yrcache-mfs/mounts
bench-store: setup
	mkdir -p $(BENCH_DIR)
	.venv/bin/python -m yrcache.bench.store_bench --dir $(BENCH_DIR) \
		--json $(BENCH_DIR)/store_bench.json --plot $(BENCH_DIR)/store_bench.png $(BENCH_ARGS)
	@if [ -f $(MFS_MOUNTS) ]; then \
		IFS=: read -r A B < $(MFS_MOUNTS); \
		if [ -d "$$A" ] && [ -d "$$B" ]; then \
			echo "==> MooseFS: $$A (other mount $$B)"; \
			.venv/bin/python -m yrcache.bench.store_bench --dir "$$A" --mount-b "$$B" \
				--json $(BENCH_DIR)/store_bench_mfs.json --plot $(BENCH_DIR)/store_bench_mfs.png \
				$(BENCH_ARGS); \
		else \
			echo "==> $(MFS_MOUNTS) names $$A:$$B, not both usable directories: MooseFS run skipped"; \
		fi; \
	else \
		echo "==> no $(MFS_MOUNTS) (sudo bash scripts/mfs_up.sh): MooseFS run skipped"; \
	fi

# the seed's multi-turn test on real vLLM (CPU backend): native vs yrcache sync vs async, one node
# and, when the MooseFS mounts are up, two nodes (turns alternate between the mounts)
bench-vllm: setup
	mkdir -p $(BENCH_DIR)
	.venv/bin/python -m yrcache.bench.vllm_bench --dir $(BENCH_DIR) \
		--json $(BENCH_DIR)/vllm_bench.json --plot $(BENCH_DIR)/vllm_bench.png $(BENCH_ARGS)
	@if [ -f $(MFS_MOUNTS) ]; then \
		IFS=: read -r A B < $(MFS_MOUNTS); \
		if [ -d "$$A" ] && [ -d "$$B" ]; then \
			.venv/bin/python -m yrcache.bench.vllm_bench --dir "$$A" --dir-b "$$B" \
				--json $(BENCH_DIR)/vllm_bench_2nodes.json \
				--plot $(BENCH_DIR)/vllm_bench_2nodes.png $(BENCH_ARGS); \
		fi; \
	fi
	B=""; if [ -f $(MFS_MOUNTS) ]; then IFS=: read -r A _ < $(MFS_MOUNTS); \
		[ -d "$$A" ] && B="--dir-b $$A"; fi; \
	.venv/bin/python -m yrcache.bench.vllm.queued --dir $(BENCH_DIR) $$B \
		--json $(BENCH_DIR)/vllm_queued.json $(filter --quick,$(BENCH_ARGS)) $(QUEUED_ARGS)

# `vllm serve` under many chat users (native vs yrcache async vs sync, users within a TTFT SLO),
# then, when the MooseFS mounts are up, two servers per system on the two mounts behind a router
SERVE_ARGS ?= --shape 100m --users 1,2,4,8,16 --turns 6 --user 256 --answer 16 --think 2
bench-serve: setup
	mkdir -p $(BENCH_DIR)
	.venv/bin/python -m yrcache.bench.serve_bench --dir $(BENCH_DIR) \
		--out $(BENCH_DIR)/serve $(SERVE_ARGS) $(BENCH_ARGS)
	@if [ -f $(MFS_MOUNTS) ]; then \
		IFS=: read -r A B < $(MFS_MOUNTS); \
		if [ -d "$$A" ] && [ -d "$$B" ]; then \
			.venv/bin/python -m yrcache.bench.serve_bench --dir "$$A" --dir-b "$$B" \
				--systems native,async --out $(BENCH_DIR)/serve_2nodes $(SERVE_ARGS) \
				$(BENCH_ARGS); \
		fi; \
	fi

# On an H100/H200 (no registry there): run scripts/gpu_debs.sh here first and carry .debs along.
gpu-check:
	OUT=$${OUT:-gpu_out} bash bench/gpu_check.sh

# lint first (ruff: the rule set in pyproject.toml), then the suite
lint: setup
	.venv/bin/ruff check yrcache tests setup.py

test: lint
	.venv/bin/python -m pytest tests --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf build .venv *.egg-info bench-results
