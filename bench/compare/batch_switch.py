#!/usr/bin/env python3
"""Tables of the batch-size study of docs/planner-comparison.md from llep-replay's JSON
Lines (see batch_switch.sh), and the data of its plot."""
import json
import os
import re
import sys

PLANNERS = ["ep", "llep", "adaptive", "cost_aware"]


def main(out):
    with open(os.path.join(out, "batch.jsonl"), encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    cases = {}
    for r in recs:
        m = re.search(r"p(\d+)-(\d+)%-on-4-(\d+)\.npy$", r["file"])
        p, share, tpr = int(m.group(1)), int(m.group(2)), int(m.group(3))
        cases.setdefault((p, share), {}).setdefault(tpr, {})[r["planner"]] = r
    series = []
    for (p, share), by_tpr in sorted(cases.items()):
        nodes = p // next(iter(by_tpr.values()))["ep"]["ranks_per_node"]
        print(f"\n#### P = {p} ({nodes} node{'s' if nodes > 1 else ''}), {share}% of picks on 4 hot experts\n")
        print("| tokens / rank | EP ms | LLEP ms | Adaptive ms (chose) | CostAware ms (weight transfers) "
              "| Adaptive / best of EP, LLEP | CostAware / best of EP, LLEP |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for tpr, rs in sorted(by_tpr.items()):
            ms = {q: rs[q]["step_s"] * 1e3 for q in PLANNERS}
            best = min(ms["ep"], ms["llep"])
            ca = rs["cost_aware"]
            ca_plan = "EP's plan" if ca["weight_transfers"] == 0 and ca["rank_loads"] == rs["ep"]["rank_loads"] \
                else f"{ca['weight_transfers']}"
            print(f"| {tpr} | {ms['ep']:.3f} | {ms['llep']:.3f} | {ms['adaptive']:.3f} ({rs['adaptive']['chosen']}) | "
                  f"{ms['cost_aware']:.3f} ({ca_plan}) | {ms['adaptive'] / best:.2f}x | {ms['cost_aware'] / best:.2f}x |")
            series.append((p, share, tpr, [ms[q] / ms["ep"] for q in PLANNERS]))
    with open(os.path.join(out, "batch.dat"), "w", encoding="utf-8") as f:
        # One gnuplot block per (P, share): tokens/rank, then each planner's step over EP's.
        for key in sorted({(p, s) for p, s, _, _ in series}):
            f.write(f"# P={key[0]} share={key[1]}% tpr " + " ".join(PLANNERS) + "\n")
            for p, s, tpr, v in series:
                if (p, s) == key:
                    f.write(f"{tpr} " + " ".join(f"{x:.4f}" for x in v) + "\n")
            f.write("\n\n")


if __name__ == "__main__":
    main(sys.argv[1])
