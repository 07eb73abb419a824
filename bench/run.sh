#!/usr/bin/env bash
# Runs the CPU benchmarks and rewrites docs/benchmarks.md's tables and plots, in one go:
#   1. alloy_bench's merge grid (1-256 Mi parameters x 2-16 models x f32/bf16 x 1-2 threads) and
#      bench/torch_baseline.py on its 16 Mi cases (the same data): the "Merge policies" and
#      "Scaling" tables (bench/merge_table.py), docs/data/cpu_merge_grid.csv;
#   2. alloy-merge's peak memory and time as models (2-16) and model size grow
#      (bench/merge_cli_bench.py), docs/data/cli_scaling.csv, and docs/plots/merge_scaling.svg;
#   3. the 100-task continual sequence (bench/continual_bench), docs/data/continual_sequence.csv and
#      docs/plots/continual_sequence.svg (its summary is printed for docs/benchmarks.md);
#   4. `floor` (not in the default set: about 40 minutes more): every method of the registry end to
#      end beside the I/O floor, bf16/f16/f32 models of 0.5 and 2 GB, docs/data/cli_floor.csv.
#   bench/run.sh [merges] [cli] [continual] [floor]   # the first three by default; build/release must be built
# About 40 minutes on a 2-core machine; it needs about 12 GB of memory and 25 GB of disk in $TMPDIR.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${ALLOY_BUILD_DIR:-$root/build/release}
parts=${*:-merges cli continual}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python=/usr/bin/python3
mkdir -p "$root/docs/data" "$root/docs/plots"
if [[ " $parts " == *" merges "* ]]; then
  "$build/bench/alloy_bench" --benchmark_filter='BM_merge' --benchmark_min_time=0.5 \
    --benchmark_format=json --benchmark_out="$work/alloy.json" --benchmark_out_format=json >/dev/null
  "$python" "$root/bench/torch_baseline.py" --json "$work/torch.json" >/dev/null
  "$python" "$root/bench/merge_table.py" "$work/alloy.json" "$work/torch.json" "$root/docs/benchmarks.md" \
    "$root/docs/data/cpu_merge_grid.csv"
fi
if [[ " $parts " == *" cli "* ]]; then
  cli="$root/docs/data/cli_scaling.csv"
  echo "method,models,gigabytes,seconds,peak_rss_mb,floor_seconds,dtype" >"$cli"
  for models in 2 4 8 16; do
    "$python" "$root/bench/merge_cli_bench.py" "$build/tools/alloy-merge" "$work/cli" --gigabytes 0.6 \
      --models "$models" --methods linear,ties --csv "$cli"
  done
  rm -rf "$work/cli"
  for gigabytes in 1.2 2.4; do
    "$python" "$root/bench/merge_cli_bench.py" "$build/tools/alloy-merge" "$work/cli$gigabytes" --gigabytes "$gigabytes" \
      --methods linear,ties --csv "$cli"
    rm -rf "$work/cli$gigabytes"
  done
fi
if [[ " $parts " == *" floor "* ]]; then
  floor_csv="$root/docs/data/cli_floor.csv"
  echo "method,models,gigabytes,seconds,peak_rss_mb,floor_seconds,dtype" >"$floor_csv"
  for dtype in BF16 F16 F32; do
    for gigabytes in 0.5 2; do
      "$python" "$root/bench/merge_cli_bench.py" "$build/tools/alloy-merge" "$work/floor$dtype$gigabytes" \
        --gigabytes "$gigabytes" --dtype "$dtype" --methods all --threads 2 --csv "$floor_csv"
      rm -rf "$work/floor$dtype$gigabytes"
    done
  done
fi
if [[ -f "$root/docs/data/cpu_merge_grid.csv" && -f "$root/docs/data/cli_scaling.csv" ]]; then
  gnuplot -e "grid='$root/docs/data/cpu_merge_grid.csv'; cli='$root/docs/data/cli_scaling.csv'; out='$root/docs/plots/merge_scaling.svg'" \
    "$root/bench/plot_scaling.gp"
fi
if [[ " $parts " == *" continual "* ]]; then
  continual="$root/docs/data/continual_sequence.csv"
  rm -f "$continual"
  ALLOY_CONTINUAL_CSV="$continual" "$build/bench/continual_bench"
  gnuplot -e "csv='$continual'; out='$root/docs/plots/continual_sequence.svg'" "$root/bench/plot_continual.gp"
fi
