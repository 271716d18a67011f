# Achieved TFLOP/s of one expert's SwiGLU FFN versus rows, from llep-gpu-bench curve.
# gnuplot -e "data='bench/results/gemm-curve-h100-2026-11-23.csv'; out='docs/img/gemm-curve-h100.svg'" scripts/gemm-curve.gnuplot
set terminal svg size 900,520 font "sans,11"
set output out
set datafile separator ","
set title "SwiGLU expert FFN, bf16, H100: achieved TFLOP/s vs rows per GEMM"
set xlabel "rows per expert GEMM"
set ylabel "TFLOP/s"
set logscale x 2
set key bottom right
set grid
set yrange [0:*]
sel(s, m) = (strcol(1) eq s && strcol(2) eq m) ? $5 : 1/0
plot for [s in "gpt-oss-120b deepseek-v3 kimi-k2"] for [m in "per_expert grouped"] \
  data using 3:(sel(s, m)) with linespoints title s." ".m
