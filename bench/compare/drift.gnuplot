# Imbalance after planning per step under drifting routing (planner_comparison.sh).
set terminal svg size 900,480 font "sans,11"
set output out
set title "Drifting routing, P = 8: max/mean rank load after planning (cost-model study)"
set xlabel "step"
set ylabel "max / mean rank load"
set key outside right
set grid
set yrange [0.9:*]
names = system("head -1 ".data." | cut -d' ' -f3-")
plot for [i=1:words(names)] data using 1:(column(i+1)) with linespoints title word(names, i)
