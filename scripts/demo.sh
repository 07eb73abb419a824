#!/usr/bin/env bash
# The README's first command: installs what is missing, fetches the datasets, builds, and runs
# alloy's main job. Until the CLIP continual-learning example lands, that job is the data and
# storage path it stands on: real MNIST and Fashion-MNIST images turned into safetensors
# datasets, written atomically, re-read through memory maps, validated and summarised.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${ALLOY_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/alloy}
export ALLOY_DATA_DIR=$data_dir

"$root/scripts/bootstrap.sh"
"$root/scripts/fetch_data.sh"
"$root/scripts/build.sh" release

bin="$root/build/release"
run_dir="$root/runs/demo"
mkdir -p "$run_dir"
"$bin/examples/datasets/prepare_datasets" "$data_dir"

report="$run_dir/report.md"
{
  echo "# alloy demo report"
  echo
  echo "Generated $(date -u '+%Y-%m-%d %H:%M UTC') by scripts/demo.sh."
  echo
  for name in mnist fashion_mnist; do
    echo "## $name"
    echo
    echo '```'
    "$bin/tools/alloy-inspect" --stats "$data_dir/datasets/$name.safetensors"
    echo '```'
    echo
  done
} >"$report"
echo "demo: datasets in $data_dir/datasets; report at ${report#$root/}"
