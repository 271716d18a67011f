#!/usr/bin/env bash
# README's test command: installs what is missing, builds, runs every suite, and ends with
# one line per build, a line "N skipped" and a last line "N passed, N failed" summed over
# the builds (doctest test cases). The builds:
#   build  the normal build (g++, CUDA and NCCL when found): every suite (under CI=true:
#          all but the host-only test programs, which the asan build runs);
#   asan   clang++ with AddressSanitizer + UndefinedBehaviorSanitizer, any report fatal: the
#          host suites (not the packaging consumers), the tools and demos, and a few seconds
#          of each libFuzzer target;
#   tsan   g++ with ThreadSanitizer, any report fatal: the multi-rank suites (transport,
#          layer, replicated, device) but their single-thread tests.
# LLEP_BUILDS="build" (or any subset, space-separated) runs only those builds; LLEP_JOBS=N
# limits parallel compile jobs (default: Ninja's).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh || exit 1
builds="${LLEP_BUILDS:-build asan tsan}"
jobs="$(nproc)"
logs=()

# Any sanitizer report ends the test with a failure (no recovery, no "continue").
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:abort_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:abort_on_error=1:second_deadlock_stack=1"

# A build's tests run while the next build compiles: a test phase leaves the cores idle for
# a good share of its time (mpirun's processes, the consumers' configure steps, the longest
# test's tail). Their output is printed when they end; --timeout-multiplier 3 because a test
# may run slower beside the compile. LLEP_OVERLAP=0 runs each build's tests before the next.
pending_pid="" pending_label="" pending_out=""
finish_tests() {
  [ -n "$pending_pid" ] || return 0
  wait "$pending_pid"
  echo "llep: [$pending_label] tests"
  cat "$pending_out"
  pending_pid=""
}

# run LABEL DIR [SUITE | !SUITE]...: compiles what the named suites need (everything when
# none is named), runs them (all but the !SUITEs; in the background, see above), and records
# DIR's test log under LABEL (a missing log, after a failed compile, counts as a failure).
run() {
  local label="$1" dir="$2"
  shift 2
  local log="$dir/meson-logs/testlog.json" suites=() wanted=() targets=()
  rm -f "$log"
  logs+=("$label=$log")
  for s in "$@"; do
    case "$s" in
      !*) suites+=(--no-suite "${s#!}") ;;
      *) suites+=(--suite "$s"); wanted+=("$s") ;;
    esac
  done
  if [ ${#wanted[@]} -gt 0 ]; then
    mapfile -t targets < <(python3 scripts/test_targets.py "$dir" "$@")
  fi
  echo "llep: [$label] compiling ${targets[*]:-everything}"
  if ! meson compile -C "$dir" ${LLEP_JOBS:+-j "$LLEP_JOBS"} "${targets[@]}"; then
    echo "llep: [$label] compile failed"
    return
  fi
  finish_tests
  pending_label="$label" pending_out="$dir/meson-logs/test-output.txt"
  meson test -C "$dir" --no-rebuild --print-errorlogs --num-processes "$jobs" --timeout-multiplier 3 \
    "${suites[@]}" >"$pending_out" 2>&1 &
  pending_pid=$!
  [ "${LLEP_OVERLAP:-1}" = 0 ] && finish_tests
  return 0
}

# Sanitizer builds: host only, no MPI (Open MPI's own leaks would fail LeakSanitizer), no
# benchmarks; -O0 keeps every check and stack frame and compiles 2-4x faster than -O1 (the
# tests run about twice as long, which costs less), except the few test programs that run
# far longer than they compile (heavy_test_options in meson.build: -O1 in any -O0 build).
sanitize_args=(-Dcuda=disabled -Dnccl=disabled -Dmpi=disabled -Dbench=false -Doptimization=0 -Ddebug=false -Db_ndebug=false
               -Dcpp_args=-fno-sanitize-recover=all)
for b in $builds; do
  case "$b" in
    build)
      # CI has no GPU and times nothing: one architecture (sm_80, the oldest supported)
      # proves that the device code compiles, -O0 halves the host compiler's time (the
      # tests run the same, a little slower; the sanitizer builds are -O0 too), and nvcc's
      # -Ofc=max (fast compile) with cicc at -O0 skips the device optimiser's costly passes
      # but still emits SASS for every kernel. CI also leaves the host-only tests and the
      # host headers compiled alone (-Dhost_tests=false) to the asan build, which compiles
      # and runs every one of them under the sanitizers; this build keeps what only it can
      # run (CUDA, NCCL, MPI, the package consumers, the device headers compiled alone) and
      # the tools and examples, which it compiles with g++ and runs.
      # Elsewhere the build keeps the defaults (release, sm_80 + sm_90a, optimised device
      # code, every suite): its GPU tests run on Ampere and Hopper alike and its benchmarks
      # are optimised.
      arch_args=()
      [ "${CI:-}" = true ] && [ ! -f build/build.ninja ] &&
        arch_args=(-Dgpu_arch=80 -Doptimization=0 "-Dcuda_args=-Ofc=max -Xcicc -O0" -Dhost_tests=false)
      bash scripts/configure.sh "${arch_args[@]}" || { echo "0 passed, 1 failed"; exit 1; }
      run build build
      ;;
    asan)
      [ -f build-asan/build.ninja ] ||
        CXX=clang++ meson setup build-asan "${sanitize_args[@]}" -Db_sanitize=address,undefined -Db_lundef=false ||
        { logs+=("asan=build-asan/missing"); continue; }
      run asan build-asan '!consumers'
      ;;
    tsan)
      [ -f build-tsan/build.ninja ] ||
        CXX=g++ meson setup build-tsan "${sanitize_args[@]}" -Dtools=false -Dexamples=false -Db_sanitize=thread ||
        { logs+=("tsan=build-tsan/missing"); continue; }
      run tsan build-tsan transport layer replicated device '!single-thread'
      ;;
    *) echo "llep: unknown build '$b' in LLEP_BUILDS"; logs+=("$b=unknown/testlog.json") ;;
  esac
done
finish_tests
python3 scripts/summarize_tests.py "${logs[@]}"
