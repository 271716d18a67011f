#!/bin/sh
# Runs one libFuzzer target for a while: run_fuzzer.sh FUZZER SEED_DIR WORK_DIR.
# Seconds: LLEP_FUZZ_SECONDS (default 5). New inputs go to WORK_DIR (in the build folder),
# never to the seed corpus in the repository. A finding exits 1 (libFuzzer's own default,
# 77, would read as a skip to Meson) and leaves crash-* / leak-* / timeout-* in WORK_DIR.
set -eu
mkdir -p "$3"
cd "$3"
exec "$1" -max_total_time="${LLEP_FUZZ_SECONDS:-5}" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
  -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1 "$3" "$2"
