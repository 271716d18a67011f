#!/usr/bin/env bash
# README's test command: installs what is missing, builds, runs every suite, and ends with
# a line "N skipped" and a last line "N passed, N failed" counting doctest test cases.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || exit 1
bash scripts/configure.sh || exit 1
meson compile -C build || { echo "0 passed, 1 failed"; exit 1; }
meson test -C build --print-errorlogs --num-processes "$(nproc)"
python3 scripts/summarize_tests.py build/meson-logs/testlog.json
