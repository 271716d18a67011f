#!/usr/bin/env bash
# Configures ./build once (CUDA and NCCL auto-detected); later calls reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build/build.ninja ]; then
  meson setup build "$@"
fi
