#!/usr/bin/env bash
# Installs, through apt-get, only the build and test packages that are not there yet.
set -euo pipefail
# cmake: the CMake consumer test; clang and libclang-rt-14-dev: the sanitizer build and the
# libFuzzer targets (scripts/test.sh).
want=(meson ninja-build pkg-config g++ doctest-dev libcli11-dev nlohmann-json3-dev python3 libopenmpi-dev openmpi-bin cmake clang
      libclang-rt-14-dev)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "llep: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
