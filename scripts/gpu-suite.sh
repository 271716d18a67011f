#!/usr/bin/env bash
# The GPU record: builds on a CUDA machine that has Meson, Ninja and nvcc but none of
# Debian's packages (doctest, CLI11 and nlohmann/json copied into .tp/, given relative to the source root
# because newer Meson refuses absolute paths inside it; see docs/gpu-status.md), runs the
# GPU suite, the rest of the suites, the GPU demo, the device planner and device step
# benchmarks, example 05 and the GPU benchmarks (forward, the table with the device step for
# a few rows, and forward + backward for a few scenarios), and writes the logs into OUT
# (default ./gpu-out).
#   bash scripts/gpu-suite.sh --prepare   # on a machine WITH Debian's packages: fill .tp/
#   bash scripts/gpu-suite.sh             # on the GPU machine
# The whole run fits BUDGET_S seconds (default 540, under a 10-minute device call): each
# stage has its own limit, cut to what is left, so a slow stage still leaves the earlier
# results behind and later stages report "skipped (budget)". Stages in priority order.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --prepare ]; then
  inc="${TP_FROM:-/usr/include}"
  mkdir -p .tp/doctest &&
    cp "$inc/doctest/doctest.h" .tp/doctest/ && cp -r "$inc/CLI" "$inc/nlohmann" .tp/ ||
    { echo "error: need $inc/doctest/doctest.h, $inc/CLI/ and $inc/nlohmann/ (TP_FROM=folder)"; exit 1; }
  echo ".tp/ ready ($(du -sh .tp | cut -f1)); carry it to the GPU machine"
  exit 0
fi

start=$SECONDS
BUDGET_S="${BUDGET_S:-540}"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
BUILD="${BUILD:-build-gpu}"
ARCH="${GPU_ARCH:-90a}"
summary="$OUT/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
# left LIMIT: seconds this stage may take, LIMIT cut to the budget left; 0 when under 20 s.
left() {
  local rest=$((BUDGET_S - (SECONDS - start)))
  if [ "$rest" -lt 20 ]; then echo 0; elif [ "$rest" -lt "$1" ]; then echo "$rest"; else echo "$1"; fi
}
# stage NAME LIMIT LOG CMD...: runs CMD under its limit, appends to LOG, records rc and time.
stage() {
  local name=$1 limit t0 rc log=$3
  limit=$(left "$2")
  shift 3
  if [[ $1 == */* && ! -x $1 ]]; then
    note "$name: not built ($1)"
    return 0
  fi
  if [ "$limit" = 0 ]; then
    note "$name: skipped (budget of ${BUDGET_S}s spent)"
    return 0
  fi
  t0=$SECONDS
  echo "\$ $* (limit ${limit}s)" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "rc=$rc" >>"$log"
  local what=ok
  case $rc in 0) ;; 77) what="skipped (exit 77)" ;; 124) what="TIMED OUT" ;; *) what="FAILED" ;; esac
  note "$name: $what (rc=$rc, $((SECONDS - t0))s) -> $(basename "$log")"
}

{
  date -u
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  nvcc --version | tail -2
  meson --version
} >"$OUT/info.txt" 2>&1

[ -f .tp/doctest/doctest.h ] && [ -d .tp/CLI ] && [ -d .tp/nlohmann ] ||
  note "warning: .tp/ is incomplete (bash scripts/gpu-suite.sh --prepare where Debian's packages are): doctest suites and CLI tools will not be built"
# No mpirun on the GPU machines (no Debian packages): the mpi suite and mpi-nccl-layer-np2
# (tests/mpi/meson.build) are not even registered; say so instead of letting them vanish.
mpi_opt=()
if ! command -v mpirun >/dev/null && ! command -v mpiexec >/dev/null; then
  mpi_opt=(-Dmpi=disabled)
  note "mpi: skipped (no mpirun here): the mpi suite and mpi-nccl-layer-np2 (tests/mpi/test_mpi_layer_nccl.cu) did not run"
fi

# The host-only tests (HOST_TESTS=false, the default here) are CI's: leaving them out saves
# the device's minutes for what only a GPU can run.
reconf=()
[ -f "$BUILD/build.ninja" ] && reconf=(--reconfigure)
stage configure 120 "$OUT/build.txt" meson setup "${reconf[@]}" "$BUILD" -Dthird_party_include=.tp \
  -Dgpu_arch="$ARCH" -Dbench=true -Dexamples=true -Dtests=true -Dhost_tests="${HOST_TESTS:-false}" "${mpi_opt[@]}"
[ -f "$BUILD/build.ninja" ] || { tail -50 "$OUT/build.txt"; exit 1; }
[ -n "${STOP_AFTER_CONFIGURE:-}" ] && { cat "$summary"; exit 0; }
# The gpu suite's programs first, so that a slow build still leaves GPU test results; then
# the rest. -k 0: a target that fails to compile does not stop the others (its tests then
# fail).
mapfile -t gpu_targets < <(python3 scripts/test_targets.py "$BUILD" gpu)
stage "build (gpu suite, ${#gpu_targets[@]} targets)" "${BUILD_S:-300}" "$OUT/build.txt" \
  ninja -C "$BUILD" -k 0 -j"$(nproc)" "${gpu_targets[@]}"
grep -q '^rc=0$' <(tail -1 "$OUT/build.txt") || tail -40 "$OUT/build.txt"

# meson test refuses to run anything when one test's program is missing, so a target that
# failed to build would cost every test: run by name only the tests whose programs exist.
# tests_of gpu|host: those names, one a line; the missing ones go to the summary.
tests_of() {
  meson introspect --tests --targets "$BUILD" | python3 -c '
import json, os, sys
want, build, summary = sys.argv[1], sys.argv[2], sys.argv[3]
info = json.load(sys.stdin)
built = {t["id"]: all(os.path.exists(f) for f in t["filename"]) for t in info["targets"]}
missing = []
for t in info["tests"]:
    if ("llep:gpu" in t["suite"]) != (want == "gpu"):
        continue
    prog = t["cmd"][0] if os.path.isabs(t["cmd"][0]) else os.path.join(build, t["cmd"][0])
    if os.path.exists(prog) and all(built.get(d, True) for d in t["depends"]):
        print(t["name"])
    else:
        missing.append(t["name"])
if missing:
    with open(summary, "a") as f:
        f.write("tests (%s) not run, their programs were not built: %s\n" % (want, " ".join(missing)))
' "$1" "$BUILD" "$summary"
}
# GPU suite first (tests/gpu, example 05, mpi-nccl-layer-np2 where MPI is), then the rest.
# The suite includes issue 14's device-step tests: device_layout, device_step,
# cuda_sort_scratch, peer_all_to_all (tests/gpu/meson.build; docs/gpu-status.md lists them).
mapfile -t gpu_tests < <(tests_of gpu)
# Without names meson test would run every test: an empty list is reported instead.
if [ ${#gpu_tests[@]} -gt 0 ]; then
  stage "tests (suite gpu, ${#gpu_tests[@]} tests)" 200 "$OUT/tests-gpu.txt" meson test -C "$BUILD" --no-rebuild \
    --print-errorlogs --logbase gpu --num-processes 4 "${gpu_tests[@]}"
else note "tests (suite gpu): none built"; fi
stage "build (the rest)" "${BUILD_REST_S:-240}" "$OUT/build.txt" ninja -C "$BUILD" -k 0 -j"$(nproc)"
grep -q '^rc=0$' <(tail -1 "$OUT/build.txt") || tail -40 "$OUT/build.txt"
mapfile -t host_tests < <(tests_of host)
if [ ${#host_tests[@]} -gt 0 ]; then
  stage "tests (other suites, ${#host_tests[@]} tests)" 180 "$OUT/tests-host.txt" meson test -C "$BUILD" --no-rebuild \
    --print-errorlogs --logbase host --num-processes "$(nproc)" "${host_tests[@]}"
else note "tests (other suites): none built"; fi
python3 scripts/summarize_tests.py gpu="$BUILD/meson-logs/gpu.json" host="$BUILD/meson-logs/host.json" \
  >"$OUT/tests.txt" 2>&1
grep -h -E '^(Ok|Expected Fail|Fail|Unexpected Pass|Skipped|Timeout): ' "$OUT"/tests-gpu.txt "$OUT"/tests-host.txt \
  >>"$OUT/tests.txt" 2>/dev/null
grep -h -E ' (FAIL|TIMEOUT|SKIP) ' "$OUT"/tests-gpu.txt "$OUT"/tests-host.txt >>"$OUT/tests.txt" 2>/dev/null

stage "llep-gpu-demo" 90 "$OUT/gpu-demo.txt" "$BUILD/examples/gpu-demo/llep-gpu-demo"
stage "llep-gpu-demo --grouped" 90 "$OUT/gpu-demo.txt" "$BUILD/examples/gpu-demo/llep-gpu-demo" --grouped
stage "llep-device-plan-bench" 90 "$OUT/device-plan-bench.txt" "$BUILD/bench/plan/llep-device-plan-bench" \
  --reps "${PLAN_REPS:-200}" --rounds "${PLAN_ROUNDS:-21}"
stage "llep-device-step-bench" 60 "$OUT/device-step-bench.txt" "$BUILD/bench/device/llep-device-step-bench" \
  --reps "${PLAN_REPS:-200}" --rounds "${PLAN_ROUNDS:-21}"
stage "llep-sync-free-bench" 90 "$OUT/sync-free-bench.txt" "$BUILD/bench/device/llep-sync-free-bench" \
  --reps "${FREE_REPS:-20}" --rounds "${FREE_ROUNDS:-7}"
stage "example 05 gpu-layer" 60 "$OUT/gpu-layer.txt" "$BUILD/examples/05-gpu-layer/gpu-layer"
stage "llep-train-gpu" 60 "$OUT/train-gpu.txt" "$BUILD/examples/training/llep-train-gpu"
stage "llep-gpu-bench experts" 90 "$OUT/bench.txt" "$BUILD/bench/gpu/llep-gpu-bench" experts \
  --csv "$OUT/grouped-vs-cublas.csv"
# The paper's table with the device step (--device-step, docs/benchmarks.md): six rows at
# 2048 tokens a rank (the paper's 16-32k do not fit 8 ranks' worst-case buffers on one GPU), each
# row written as soon as it is measured, so a cut leaves the rows before it.
stage "llep-gpu-bench table --device-step" "${DEVICE_TABLE_S:-60}" "$OUT/bench-device-table.txt" \
  "$BUILD/bench/gpu/llep-gpu-bench" table --device-step --tokens 2048 --reps 3 --warmup 1 \
  --routing balanced,95%-on-1 --csv "$OUT/device-table.csv" --markdown "$OUT/device-table.md"
stage "llep-gpu-bench curve" 90 "$OUT/bench.txt" "$BUILD/bench/gpu/llep-gpu-bench" curve --csv "$OUT/gemm-curve.csv"
# The training columns (forward + backward per rank, --backward; docs/benchmarks.md): a few
# scenarios, each its own stage so that a slow one leaves the others' results. Before the
# full forward table, which was recorded on 2026-11-23 and has no training columns.
for sc in ${TRAIN_SCENARIOS:-gpt-oss-120b:balanced gpt-oss-120b:95%-on-1 deepseek-v3:95%-on-1}; do
  shape=${sc%%:*} routing=${sc#*:} tag=$(echo "$sc" | tr ':%' '-p')
  stage "llep-gpu-bench table --backward ($shape, $routing)" "${TRAIN_S:-60}" "$OUT/bench-train.txt" \
    "$BUILD/bench/gpu/llep-gpu-bench" table --backward --reps 3 --warmup 1 --shape "$shape" --routing "$routing" \
    --csv "$OUT/train-$tag.csv" --markdown "$OUT/train-$tag.md"
done
# The full table needed about 330 s on an H100 (2026-11-23): it gets what the budget leaves.
stage "llep-gpu-bench table" "${TABLE_S:-330}" "$OUT/bench.txt" "$BUILD/bench/gpu/llep-gpu-bench" table \
  --reps 3 --warmup 1 --csv "$OUT/table.csv" --markdown "$OUT/table.md"

echo
echo "== summary ($((SECONDS - start))s of ${BUDGET_S}s; logs in $OUT)"
head -4 "$OUT/info.txt"
cat "$summary"
echo "-- tests (doctest cases per build: gpu, other suites; then total)"
cat "$OUT/tests.txt"
