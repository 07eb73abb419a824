#!/usr/bin/env bash
# The README's test command: installs what is missing, fetches the datasets, builds with warnings
# as errors, and runs the whole test suite. Prints a short summary; details only on failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
preset=${ALLOY_PRESET:-release}

"$root/scripts/bootstrap.sh"
"$root/scripts/fetch_data.sh"
"$root/scripts/build.sh" "$preset"

log="$root/build/$preset/test.log"
cd "$root"
if ctest --preset "$preset" --parallel "$(nproc)" >"$log" 2>&1; then
  grep -E "tests passed|Total Test time" "$log"
else
  grep -E "^\s*[0-9]+/[0-9]+ Test.*(Failed|Exception|Timeout|Not Run)" "$log" >&2 || true
  sed -n '/The following tests FAILED/,$p' "$log" >&2
  echo "test: failures above; full output in $log (rerun: ctest --preset $preset --rerun-failed --output-on-failure)" >&2
  exit 1
fi
