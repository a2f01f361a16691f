#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The GPU machines have no package registry and may lack libxxhash (required) and liburing
# (optional: psync otherwise). Fetch their Debian packages here into .debs/ (git-ignored); carry
# .debs to the GPU machine, where bench/gpu_check.sh unpacks them for the build (no root needed).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .debs
cd .debs
apt-get download libxxhash-dev libxxhash0 liburing-dev liburing2
ls -la
