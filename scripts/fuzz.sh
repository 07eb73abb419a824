#!/usr/bin/env bash
# Runs alloy's libFuzzer targets, each for a bounded time, with AddressSanitizer and UBSan.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Targets: safetensors_header, safetensors_index, merge_config (fuzz/*.cpp). Each target's corpus
# lives in build/fuzz/corpus/<target>, seeded from fuzz/corpus/<target> and kept between runs, so
# later runs start where earlier ones stopped. A crash, hang (> 10 s), leak or out-of-memory
# (> 4 GB) is saved under build/fuzz/findings/<target>/ and makes the script fail: copy it into
# fuzz/regressions/<target>/ with a descriptive name, where `ctest -L fuzz` replays it from then on.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(safetensors_header safetensors_index merge_config)

"$root/scripts/bootstrap.sh"
build="$root/build/fuzz"
log="$build/build.log"
mkdir -p "$build"
cd "$root"
if [[ ! -f "$build/CMakeCache.txt" ]] && ! cmake --preset fuzz >"$log" 2>&1; then
  tail -n 40 "$log" >&2; echo "fuzz: configuring failed; full log: $log" >&2; exit 1
fi
if ! cmake --build "$build" --parallel "$(nproc)" --target "${targets[@]/#/alloy_fuzz_}" >"$log" 2>&1; then
  grep -E "error" -A5 "$log" | head -n 60 >&2; echo "fuzz: build failed; full log: $log" >&2; exit 1
fi

run_target() {
  local target=$1 dict corpus="$build/corpus/$1" findings="$build/findings/$1"
  mkdir -p "$corpus" "$findings"
  cp -n "$root/fuzz/corpus/$target"/* "$corpus"/ 2>/dev/null || true
  dict="$root/fuzz/json.dict"
  [[ $target == merge_config ]] && dict="$root/fuzz/yaml.dict"
  "$build/fuzz/alloy_fuzz_$target" "$corpus" -dict="$dict" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 -artifact_prefix="$findings/" \
    >"$build/$target.log" 2>&1 || true
}

# Every target at once: libFuzzer runs one process per target, one core each.
for target in "${targets[@]}"; do run_target "$target" & done
wait

status=0
for target in "${targets[@]}"; do
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build/$target.log" | tail -n 1)
  found=$(find "$build/findings/$target" -type f | sort)
  printf '%-20s %12s runs in %s s, corpus %s inputs' "$target" "${runs:-?}" "$seconds" \
    "$(find "$build/corpus/$target" -type f | wc -l)"
  if [[ -n $found ]]; then
    printf ', FINDINGS:\n%s\n' "$found"
    status=1
  elif [[ -z $runs ]]; then
    printf ', did not finish: see %s\n' "$build/$target.log"
    status=1
  else
    printf ', no findings\n'
  fi
done
((status == 0)) || echo "fuzz: reproduce with build/fuzz/fuzz/alloy_fuzz_<target> FILE; logs in $build/<target>.log" >&2
exit $status
