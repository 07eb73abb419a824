#!/usr/bin/env bash
# Configures (first time only) and builds alloy with the given CMake preset (default: release),
# everything or only the targets named after it:  scripts/build.sh [PRESET [TARGET...]]
# Quiet: the compiler's output goes to build/<preset>/build.log and is shown only on failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
preset=${1:-release}
shift || true
targets=()
(($# == 0)) || targets=(--target "$@")
build_dir="$root/build/$preset"
log="$build_dir/build.log"
mkdir -p "$build_dir"
cd "$root"
if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
  if ! cmake --preset "$preset" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "build: configuring preset '$preset' failed; full log: $log" >&2
    exit 1
  fi
fi
if ! cmake --build --preset "$preset" --parallel "$(nproc)" "${targets[@]}" >"$log" 2>&1; then
  grep -E "error|Error" -A5 "$log" | head -n 80 >&2 || tail -n 60 "$log" >&2
  echo "build: building preset '$preset' failed; full log: $log" >&2
  exit 1
fi
