#!/usr/bin/env bash
# Newcomer command (1): set up, build, and train the tiny config on the built-in corpus (GPU if visible).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
build/bin/monta train --config configs/tiny.ini "$@"
