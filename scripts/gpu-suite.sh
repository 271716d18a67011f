#!/usr/bin/env bash
# The GPU record: builds on a CUDA machine that has Meson, Ninja and nvcc but none of
# Debian's packages (doctest, CLI11 and nlohmann/json copied into .tp/, given relative to the source root
# because newer Meson refuses absolute paths inside it; see
# docs/gpu-status.md), runs every suite, the GPU demo and the GPU benchmarks, and writes
# the logs into OUT (default ./gpu-out). Each stage has its own time limit so that a slow
# stage still leaves the earlier results behind.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
BUILD="${BUILD:-build-gpu}"
ARCH="${GPU_ARCH:-90a}"
{
  date -u
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  nvcc --version | tail -2
} >"$OUT/info.txt"
meson setup "$BUILD" -Dthird_party_include=.tp -Dgpu_arch="$ARCH" -Dbench=true >"$OUT/build.txt" 2>&1 &&
  ninja -C "$BUILD" -j"$(nproc)" >>"$OUT/build.txt" 2>&1 || { tail -50 "$OUT/build.txt"; exit 1; }
timeout 240 meson test -C "$BUILD" --no-rebuild --print-errorlogs --num-processes 4 >"$OUT/tests.txt" 2>&1
python3 scripts/summarize_tests.py "$BUILD/meson-logs/testlog.json" >>"$OUT/tests.txt" 2>&1
{
  timeout 120 "$BUILD/examples/gpu-demo/llep-gpu-demo"
  echo "rc=$?"
  timeout 120 "$BUILD/examples/gpu-demo/llep-gpu-demo" --grouped
  echo "rc=$?"
} >"$OUT/gpu-demo.txt" 2>&1
timeout 120 "$BUILD/bench/gpu/llep-gpu-bench" curve --csv "$OUT/gemm-curve.csv" >"$OUT/bench.txt" 2>&1
echo "curve rc=$?" >>"$OUT/bench.txt"
timeout "${TABLE_S:-240}" "$BUILD/bench/gpu/llep-gpu-bench" table --reps 3 --warmup 1 --csv "$OUT/table.csv" \
  --markdown "$OUT/table.md" >>"$OUT/bench.txt" 2>&1
echo "table rc=$?" >>"$OUT/bench.txt"
tail -3 "$OUT/tests.txt"
