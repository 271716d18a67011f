#!/usr/bin/env bash
# README's first command: installs what is missing, builds, and runs the main demo
# (an MoE layer under skewed routing, standard EP vs LLEP, on 8 host threads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/configure.sh
meson compile -C build llep-demo
./build/examples/demo/llep-demo "$@"
