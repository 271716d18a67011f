#!/usr/bin/env python3
"""Tables of docs/planner-comparison.md from llep-replay's JSON Lines (see
planner_comparison.sh), and the per-step data of the drift plot."""
import json
import math
import os
import sys


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def scenario(r):
    name = os.path.basename(r["file"]).split("-", 1)[1].rsplit(".", 1)[0]
    return name


def summary(recs, title):
    planners = list(dict.fromkeys(r["planner"] for r in recs))
    print(f"\n#### {title}\n")
    print("| planner | max rank load / mean (worst, mean) | weight transfers (mean) | bytes moved MB (mean) "
          "| step ms, geometric mean | vs EP |")
    print("|---|---:|---:|---:|---:|---:|")
    by = {p: [r for r in recs if r["planner"] == p] for p in planners}
    gm = {p: math.exp(sum(math.log(r["step_s"]) for r in by[p]) / len(by[p])) for p in planners}
    for p in planners:
        rs = by[p]
        imb = [r["imbalance_after"] for r in rs]
        print(f"| {p} | {max(imb):.2f}, {sum(imb) / len(imb):.2f} | "
              f"{sum(r['weight_transfers'] for r in rs) / len(rs):.1f} | "
              f"{sum(r['bytes_moved'] for r in rs) / len(rs) / 1e6:.0f} | {gm[p] * 1e3:.3f} | "
              f"{gm['ep'] / gm[p]:.2f}x |")


def per_scenario(recs):
    planners = list(dict.fromkeys(r["planner"] for r in recs))
    print("\n| scenario | " + " | ".join(planners) + " |")
    print("|---|" + "---:|" * len(planners))
    for s in dict.fromkeys(scenario(r) for r in recs):
        cells = []
        for p in planners:
            r = next(r for r in recs if r["planner"] == p and scenario(r) == s)
            cells.append(f"{r['step_s'] * 1e3:.3f} ms / {r['imbalance_after']:.2f}")
        print(f"| {s} | " + " | ".join(cells) + " |")


def main(out):
    for p in (8, 16):
        paper = rows(os.path.join(out, f"paper-p{p}.jsonl"))
        drift = rows(os.path.join(out, f"drift-p{p}.jsonl"))
        nodes = paper[0]["ranks"] // paper[0]["ranks_per_node"]
        print(f"\n### P = {p} ({nodes} node{'s' if nodes > 1 else ''} of {paper[0]['ranks_per_node']})")
        summary(paper, "The paper's 13 routings")
        per_scenario(paper)
        summary(drift, "Drifting routing (12 steps, 4 hot experts with 80% of picks, moving 16 ids per step)")
        if p == 8:
            planners = list(dict.fromkeys(r["planner"] for r in drift))
            with open(os.path.join(out, "drift-p8.dat"), "w", encoding="utf-8") as f:
                f.write("# step " + " ".join(planners) + "\n")  # imbalance after planning
                for step in sorted({r["step"] for r in drift}):
                    vals = [next(r for r in drift if r["planner"] == q and r["step"] == step)["imbalance_after"]
                            for q in planners]
                    f.write(f"{step} " + " ".join(f"{v:.4f}" for v in vals) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
