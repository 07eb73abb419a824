#!/usr/bin/env bash
# The README's first command: installs what is missing, fetches the datasets, builds, and runs
# alloy's main job: the CLIP continual-learning example in its quick default (the example's own
# small CLIP, pretrained on first use and reused after; five tasks in three orders; PAM against
# sequential fine-tuning, merging without alignment and the per-task upper bound). Options are
# passed on to `clip_continual run`: --full for the whole study, --device cuda on a GPU, --resume
# after an interruption. Ends by printing where the report is.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${ALLOY_DATA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/alloy}
export ALLOY_DATA_DIR=$data_dir

"$root/scripts/bootstrap.sh"
"$root/scripts/fetch_data.sh"
"$root/scripts/build.sh" release prepare_datasets clip_continual  # what the demo runs, nothing more

bin="$root/build/release"
"$bin/examples/datasets/prepare_datasets" "$data_dir"
/usr/bin/python3 "$root/scripts/export_digits.py" "$data_dir/datasets"

program="$bin/examples/clip_continual/clip_continual"
if [[ ! -x "$program" ]]; then
  echo "demo: $program was not built (it needs LibTorch, CLI11 and stb: scripts/bootstrap.sh installs them)" >&2
  exit 1
fi
name=demo
for arg in "$@"; do [[ "$arg" == --full ]] && name=full; done
cd "$root"
exec "$program" run --data "$data_dir" --runs runs --name "$name" "$@"
