# Predicted step time over standard EP's across batch sizes (batch_switch.sh): data blocks
# 0..3 are (P = 8, 30%), (P = 8, 80%), (P = 16, 30%), (P = 16, 80%); columns: tokens per
# rank, then ep, llep, adaptive, cost_aware. Adaptive chose LLEP in every case here, so
# LLEP's line would lie under it.
set terminal svg size 1000,460 font "sans,11"
set output out
set multiplot layout 1,2 title "DeepSeek-V3 layer, 4 hot experts: predicted step time / standard EP's (cost model; below 1 beats EP)"
set logscale x 2
set logscale y
set xlabel "tokens per rank"
set ylabel "step time / EP step time"
set grid
set key top right
set yrange [0.1:10]
do for [p=0:1] {
  set title (p == 0 ? "P = 8 (1 node)" : "P = 16 (2 nodes of 8)")
  plot data index 2*p using 1:4 with linespoints lc 2 dt 1 title "Adaptive (= LLEP), 30% hot", \
       data index 2*p using 1:5 with linespoints lc 3 dt 1 title "CostAware, 30% hot", \
       data index 2*p+1 using 1:4 with linespoints lc 2 dt 2 title "Adaptive (= LLEP), 80% hot", \
       data index 2*p+1 using 1:5 with linespoints lc 3 dt 2 title "CostAware, 80% hot", \
       1 with lines lc rgb "black" dt 3 title "standard EP"
}
unset multiplot
