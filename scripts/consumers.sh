#!/usr/bin/env bash
# Builds and runs the three consumers of tests/consumers/, each a program that includes
# llep and plans one batch, the way an engine would use llep (docs/packaging.md):
#   meson      llep as a Meson subproject; none of llep's own targets may be built
#   cmake      find_package(llep CONFIG) on an installed llep: a .cpp target on llep::llep
#              and, where nvcc exists, a .cu target on llep::cuda
#   pkgconfig  g++ and nvcc with `pkg-config --cflags --libs llep`
# Usage: scripts/consumers.sh [meson|cmake|pkgconfig]... (default: all three). One line
# "consumer NAME: ok|FAILED|skipped (why)" each; exit 0, 1 on a failure, 77 when every
# consumer asked for was skipped (meson test's skip code). tests/consumers/meson.build runs
# each as one test.
set -uo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
cons="$src/tests/consumers"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/llep-consumers.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/log"
jobs=(-j 1)

run() {  # run CMD...: quiet unless it fails
  if ! "$@" >>"$log" 2>&1; then
    echo "failed: $*"
    tail -n 40 "$log"
    return 1
  fi
}

# Installs the headers, llep.pc and the CMake package into $tmp/prefix, as docs/packaging.md
# says, and checks that this builds nothing (the configured build has no target).
install_llep() {
  [ -d "$tmp/prefix" ] && return 0
  run meson setup "$tmp/build-install" "$src" --prefix="$tmp/prefix" \
    -Dtests=false -Dtools=false -Dexamples=false -Dbench=false || return 1
  local targets
  targets="$(meson introspect --targets "$tmp/build-install")"
  if [ "$targets" != "[]" ]; then
    echo "installing llep would build targets: $targets"
    return 1
  fi
  run meson install -C "$tmp/build-install" || return 1
}

# Number of build targets of the subproject llep in a configured consumer build.
llep_targets() {
  meson introspect --targets "$1" | python3 -c \
    'import json,sys; print(sum(t.get("subproject") == "llep" for t in json.load(sys.stdin)))'
}

consumer_meson() {
  local d="$tmp/meson"
  mkdir -p "$d/subprojects"
  cp "$cons/meson/meson.build" "$cons/plan_batch.cpp" "$d/"
  ln -s "$src" "$d/subprojects/llep"
  run meson setup "$d/build" "$d" --force-fallback-for=llep || return 1
  local n
  n="$(llep_targets "$d/build")"
  if [ "$n" != 0 ]; then
    echo "llep as a subproject declares $n targets of its own (tests, tools, benchmarks)"
    return 1
  fi
  # The check can fail: asking for llep's examples declares some.
  run meson setup "$d/build-asked" "$d" --force-fallback-for=llep -Dllep:examples=true || return 1
  n="$(llep_targets "$d/build-asked")"
  if [ "$n" = 0 ]; then
    echo "-Dllep:examples=true declared no llep target: the check above proves nothing"
    return 1
  fi
  run meson compile -C "$d/build" "${jobs[@]}" || return 1
  run "$d/build/plan_batch" || return 1
}

consumer_cmake() {
  if ! command -v cmake >/dev/null; then
    echo "cmake not found"
    return 77
  fi
  install_llep || return 1
  local d="$tmp/cmake" cuda=OFF
  mkdir -p "$d"
  cp "$cons/cmake/CMakeLists.txt" "$cons/plan_batch.cpp" "$cons/plan_batch.cu" "$d/"
  if command -v nvcc >/dev/null; then
    cuda=ON
  else
    echo "nvcc not found: the .cu target is not built"
  fi
  run cmake -S "$d" -B "$d/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DWITH_CUDA=$cuda \
    -DCMAKE_CUDA_ARCHITECTURES=80 || return 1
  run cmake --build "$d/build" "${jobs[@]}" || return 1
  run "$d/build/plan_batch" || return 1
  if [ $cuda = ON ]; then
    run "$d/build/plan_batch_cu" || return 1
  fi
}

consumer_pkgconfig() {
  if ! command -v pkg-config >/dev/null; then
    echo "pkg-config not found"
    return 77
  fi
  install_llep || return 1
  local d="$tmp/pkgconfig" pc
  mkdir -p "$d"
  pc="$(dirname "$(find "$tmp/prefix" -name llep.pc | head -n 1)")"
  export PKG_CONFIG_PATH="$pc"
  local flags
  flags="$(pkg-config --cflags --libs llep)" || { echo "pkg-config does not find llep in $pc"; return 1; }
  echo "pkg-config --cflags --libs llep: $flags" >>"$log"
  # shellcheck disable=SC2086  # the flags are words
  run g++ "$cons/plan_batch.cpp" $flags -o "$d/plan_batch" || return 1
  run "$d/plan_batch" || return 1
  if command -v nvcc >/dev/null; then
    # shellcheck disable=SC2086
    run nvcc -arch=sm_80 "$cons/plan_batch.cu" $flags -o "$d/plan_batch_cu" || return 1
    run "$d/plan_batch_cu" || return 1
  else
    echo "nvcc not found: the .cu program is not built"
  fi
}

names=("$@")
[ ${#names[@]} -eq 0 ] && names=(meson cmake pkgconfig)
failed=0 skipped=0
for name in "${names[@]}"; do
  case "$name" in
    meson | cmake | pkgconfig) ;;
    *) echo "error: unknown consumer '$name' (meson, cmake, pkgconfig)" >&2; exit 2 ;;
  esac
  : >"$log"
  "consumer_$name"
  rc=$?
  if [ $rc -eq 0 ]; then
    grep -h '^plan_batch' "$log" | sed 's/^/  /'
    echo "consumer $name: ok"
  elif [ $rc -eq 77 ]; then
    echo "consumer $name: skipped"
    skipped=$((skipped + 1))
  else
    echo "consumer $name: FAILED"
    failed=$((failed + 1))
  fi
done
[ $failed -gt 0 ] && exit 1
[ $skipped -eq ${#names[@]} ] && exit 77
exit 0
