# How a merge's time grows with parameters and with models (alloy_bench's grid, written as CSV by
# bench/merge_table.py), and alloy-merge's peak memory with models and model size (CSV lines of
# bench/merge_cli_bench.py --csv). bench/run.sh runs it:
#   gnuplot -e "grid='grid.csv'; cli='cli.csv'; out='docs/plots/merge_scaling.svg'" bench/plot_scaling.gp
set terminal svg size 1200,420 dynamic font "sans,11"
set output out
set datafile separator ","
set key top left
set multiplot layout 1,3
set logscale xy
set xlabel "parameters per tensor (Mi)"
set ylabel "ms per merge"
set title "time vs parameters (2 models, f32, 2 threads)"
set xtics (1, 16, 64, 256)
policy(p) = strcol(1) eq p && $3 == 2 && strcol(4) eq "f32" && $5 == 2 ? $6 : 1/0
plot for [p in "linear task_arithmetic ties dare_ties magmax"] grid using ($2 / 1048576):(policy(p)) \
     with linespoints title p
set title "time vs models (16 Mi, f32, 2 threads)"
set xlabel "models"
set xtics (2, 4, 8, 16)
by_models(p) = strcol(1) eq p && $2 == 16777216 && strcol(4) eq "f32" && $5 == 2 ? $6 : 1/0
plot for [p in "linear task_arithmetic ties dare_ties magmax"] grid using 3:(by_models(p)) with linespoints title p
unset logscale
set logscale x
set title "alloy-merge peak memory (bf16, 2 threads)"
set xlabel "fine-tuned models merged"
set ylabel "peak resident MB"
set xtics (2, 4, 8, 16)
set yrange [0:*]
plot cli using ($3 < 1.0 && strcol(1) eq "linear" ? $2 : 1/0):5 with linespoints title "linear, 0.73 GB models", \
     cli using ($3 < 1.0 && strcol(1) eq "ties" ? $2 : 1/0):5 with linespoints title "ties, 0.73 GB models"
unset multiplot
