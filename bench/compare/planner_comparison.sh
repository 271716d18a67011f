#!/usr/bin/env bash
# Every planner on the paper's scenarios and on drifting routing, through llep-replay and
# the cost model (roofline default: predictions, not measurements). Writes the JSON Lines
# and the tables/plot of docs/planner-comparison.md:
#   bash bench/compare/planner_comparison.sh BUILD_DIR OUT_DIR
set -euo pipefail
BUILD="${1:-build}"
OUT="${2:-/tmp/llep-compare}"
HERE="$(cd "$(dirname "$0")/../.." && pwd)"
REPLAY="$BUILD/tools/replay/llep-replay"
mkdir -p "$OUT/paper" "$OUT/drift"
# gpt-oss-120b's layer (N = 128, K = 4), 8 ranks x 8192 tokens. Each pick is a hot expert
# with probability `share` (make_trace.py), the paper's x%-on-h with distinct top-k picks.
python3 "$HERE/tools/replay/make_trace.py" "$OUT/paper/00-balanced.npy" --tokens 65536 --top-k 4 --experts 128 \
  --hot 0 --share 0 --seed 1
i=1
for share in 30 50 80 95; do
  for hot in 1 4 16; do
    python3 "$HERE/tools/replay/make_trace.py" "$OUT/paper/$(printf %02d $i)-$share%-on-$hot.npy" --tokens 65536 \
      --top-k 4 --experts 128 --hot "$hot" --share "0.$share" --seed "$i"
    i=$((i + 1))
  done
done
# Drift: 4 hot experts with 80% of the picks, moving 16 ids (one rank's worth at P = 8)
# every step, so a placement made from history is always one step behind.
python3 "$HERE/tools/replay/make_trace.py" "$OUT/drift" --steps 12 --tokens 65536 --top-k 4 --experts 128 \
  --hot 4 --share 0.8 --drift 16 --seed 7
for p in "8 8" "16 8"; do
  set -- $p
  # Each paper scenario alone, so Replicated places from that scenario's own loads (its
  # steady state); the drift steps in order, so it places from the history of earlier steps.
  # 2 replica slots per rank: 16 redundant experts for 128, EPLB's usual one in eight.
  : >"$OUT/paper-p$1.jsonl"
  for f in "$OUT"/paper/*.npy; do
    "$REPLAY" "$f" --experts 128 --ranks "$1" --ranks-per-node "$2" --shape gpt-oss-120b --replica-slots 2 --json \
      >>"$OUT/paper-p$1.jsonl"
  done
  "$REPLAY" "$OUT/drift" --experts 128 --ranks "$1" --ranks-per-node "$2" --shape gpt-oss-120b --replica-slots 2 \
    --json >"$OUT/drift-p$1.jsonl"
done
python3 "$HERE/bench/compare/planner_comparison.py" "$OUT" >"$OUT/tables.md"
gnuplot -e "data='$OUT/drift-p8.dat'; out='$OUT/drift-p8.svg'" "$HERE/bench/compare/drift.gnuplot"
echo "wrote $OUT/tables.md and $OUT/drift-p8.svg"
