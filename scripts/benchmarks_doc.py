#!/usr/bin/env python3
"""Joins the GPU table, the cost model's predictions and the paper's printed figures into
the comparison tables of docs/benchmarks.md, and writes the data file that
scripts/speedup.gnuplot draws. Usage:
  python3 scripts/benchmarks_doc.py GPU_TABLE.csv MODEL_ROOFLINE.csv MODEL_CALIBRATED.csv OUT.dat > tables.md"""
import csv
import sys

PAPER = {("gpt-oss-120b", "95%-on-1"): "6.11x", ("deepseek-v3", "95%-on-1"): "5.13x",
         ("kimi-k2", "95%-on-1"): "5.03x"}  # Fig. 4 as PAPER-NOTES.md quotes it; balanced: 0.92-1.07x overall


def load(path):
    return {(r["shape"], r["routing"]): r for r in csv.DictReader(open(path, encoding="utf-8"))}


def main(gpu_path, roof_path, cal_path, dat_path):
    gpu, roof, cal = load(gpu_path), load(roof_path), load(cal_path)
    print("| shape | routing | paper | GPU measured | model, calibrated | model, roofline "
          "| memory EP/LLEP measured | model | LLEP vs ideal, measured |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    with open(dat_path, "w", encoding="utf-8") as dat:
        dat.write("# index label measured calibrated roofline\n")
        for i, (key, g) in enumerate(gpu.items()):
            c, r = cal.get(key), roof.get(key)
            paper = PAPER.get(key, "0.92-1.07x (all shapes)" if key[1] == "balanced" else "")
            print(f"| {key[0]} | {key[1]} | {paper} | {float(g['speedup']):.2f}x | "
                  f"{float(c['speedup']):.2f}x | {float(r['speedup']):.2f}x | {float(g['memory_ratio']):.2f}x | "
                  f"{float(c['mem_ratio']):.2f}x | {100 * float(g['llep_vs_ideal']):.0f}% |")
            label = (key[0].split("-")[0] + " " + key[1]).replace("%", "\\%")
            dat.write(f"{i} \"{label}\" {g['speedup']} {c['speedup']} {r['speedup']}\n")


if __name__ == "__main__":
    main(*sys.argv[1:5])
