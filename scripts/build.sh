#!/usr/bin/env bash
# Configures and builds monta into build/ (CUDA backend on when the toolkit, cuDNN and NCCL are found).
# Extra arguments go to cmake, e.g. scripts/build.sh -DMONTA_CUDA=OFF.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B build -G Ninja "$@"
cmake --build build -j "$(nproc)"
