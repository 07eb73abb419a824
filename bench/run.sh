#!/usr/bin/env bash
# Runs the CPU merge benchmarks and their PyTorch baseline on the same data, in one go, and rewrites
# the "Merge policies (CPU backend)" table of docs/benchmarks.md (machine, date, commands, ratios);
# then the 100-task continual sequence (bench/continual_bench) and its plot,
# docs/plots/continual_sequence.svg (its summary is printed for docs/benchmarks.md).
#   bench/run.sh            # build/release must be built (scripts/build.sh release)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${ALLOY_BUILD_DIR:-$root/build/release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=/usr/bin/python3
"$build/bench/alloy_bench" --benchmark_filter='BM_merge' --benchmark_min_time=0.5 \
  --benchmark_format=json --benchmark_out="$work/alloy.json" --benchmark_out_format=json >/dev/null
"$python" "$root/bench/torch_baseline.py" --json "$work/torch.json" >/dev/null
"$python" "$root/bench/merge_table.py" "$work/alloy.json" "$work/torch.json" "$root/docs/benchmarks.md"
rm -f "$work/continual.csv"
ALLOY_CONTINUAL_CSV="$work/continual.csv" "$build/bench/continual_bench"
gnuplot -e "csv='$work/continual.csv'; out='$root/docs/plots/continual_sequence.svg'" "$root/bench/plot_continual.gp"
