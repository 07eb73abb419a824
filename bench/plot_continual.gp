# Per-task time and resident memory of continual_bench's 100-task sequences (bench/run.sh).
#   gnuplot -e "csv='continual.csv'; out='docs/plots/continual_sequence.svg'" bench/plot_continual.gp
set terminal svg size 900,440 dynamic font "sans,11"
set output out
set datafile separator ","
set multiplot layout 1,2
set xlabel "task"
set ylabel "ms per task"
set key below
set yrange [0:*]
set offsets 0, 0, graph 0.1, 0
set title "time per task (2 threads)"
plot csv using (strcol(1) eq "running_mean" && $2 == 16 ? $4 : 1/0):8 with lines title "running-mean merge, 16M", \
     csv using (strcol(1) eq "running_mean" && $2 == 16 ? $4 : 1/0):($6 + $7) with lines title "PAM masks + align, 16M", \
     csv using (strcol(1) eq "ties" ? $4 : 1/0):8 with lines title "TIES merge, 4M"
set ylabel "resident MB"
set title "process resident memory after each task"
plot csv using (strcol(1) eq "running_mean" && $2 == 16 ? $4 : 1/0):9 with lines title "running mean, 16M", \
     csv using (strcol(1) eq "running_mean" && $2 == 4 ? $4 : 1/0):9 with lines title "running mean, 4M", \
     csv using (strcol(1) eq "ties" ? $4 : 1/0):9 with lines title "TIES, 4M"
unset multiplot
