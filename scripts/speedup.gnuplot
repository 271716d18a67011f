# Speedup of LLEP over standard EP by scenario: measured on the GPU and predicted by the
# cost model. gnuplot -e "data='F'; out='docs/img/speedup-h100.svg'" scripts/speedup.gnuplot
set terminal svg size 1400,520 font "sans,11"
set output out
set title "LLEP speedup over standard EP, P = 8 (H100 measured per rank vs cost model)"
set ylabel "speedup (x)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set xtics rotate by -60 font ",9"
set key top left
set grid ytics
set yrange [0:*]
plot data using 3:xtic(2) title "GPU measured (H100)", '' using 4 title "model, calibrated on the H100 GEMM curve", '' using 5 title "model, roofline default"
