#!/usr/bin/env bash
# Adaptive (the paper's switch on imbalance) against CostAware (the switch on predicted step
# time) across batch sizes, through llep-replay and the cost model (roofline default:
# predictions, not measurements), for the DeepSeek-V3 layer (N = 256, K = 8) at P = 8 (one
# node) and P = 16 (two nodes of 8). Writes the JSON Lines, the tables and the plot of
# docs/planner-comparison.md:
#   bash bench/compare/batch_switch.sh BUILD_DIR OUT_DIR
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-/tmp/llep-batch}"
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
REPLAY="$BUILD/tools/replay/llep-replay"
mkdir -p "$OUT/traces"
: >"$OUT/batch.jsonl"
for p in "8 8" "16 8"; do
  set -- $p
  for share in 30 80; do
    for tpr in 128 256 512 1024 2048 4096 8192 16384; do
      # x% of the picks on 4 hot experts (make_trace.py), tpr tokens per rank.
      f="$OUT/traces/p$1-$share%-on-4-$tpr.npy"
      python3 "$HERE/tools/replay/make_trace.py" "$f" --tokens $((tpr * $1)) --top-k 8 --experts 256 --hot 4 \
        --share "0.$share" --seed "$tpr"
      "$REPLAY" "$f" --experts 256 --ranks "$1" --ranks-per-node "$2" --shape deepseek-v3 \
        --planners ep,llep,adaptive,cost_aware --json >>"$OUT/batch.jsonl"
    done
  done
done
python3 "$HERE/bench/compare/batch_switch.py" "$OUT" >"$OUT/batch-tables.md"
gnuplot -e "data='$OUT/batch.dat'; out='$OUT/batch-switch.svg'" "$HERE/bench/compare/batch_switch.gnuplot"
echo "wrote $OUT/batch-tables.md and $OUT/batch-switch.svg"
