#!/usr/bin/env bash
# The README's test command: installs what is missing, fetches the datasets, builds with warnings
# as errors, and runs the whole test suite three times:
#   release  everything (g++ -O3; LibTorch and CUDA parts where found)
#   asan     the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer (g++ -O1;
#            LibTorch and CUDA off: their libraries are not instrumented)
#   tsan     the unit tests under ThreadSanitizer (clang, LLVM's OpenMP with Archer), 4 threads
# Prints a short summary; details only on failure.
#
#   scripts/test.sh            all three (what CI runs)
#   scripts/test.sh --quick    release only
#   ALLOY_PRESET=asan scripts/test.sh    one preset only
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
presets=(release asan tsan)
[[ "${1:-}" == "--quick" ]] && presets=(release)
[[ -n "${ALLOY_PRESET:-}" ]] && presets=("$ALLOY_PRESET")

"$root/scripts/bootstrap.sh"
"$root/scripts/fetch_data.sh"
cd "$root"
for preset in "${presets[@]}"; do
  SECONDS=0
  case $preset in
    tsan) "$root/scripts/build.sh" tsan alloy_tests ;;  # the threaded code is the library's: its unit tests
    *) "$root/scripts/build.sh" "$preset" ;;
  esac
  built_in=$SECONDS
  log="$root/build/$preset/test.log"
  if ctest --preset "$preset" --parallel "$(nproc)" >"$log" 2>&1; then
    printf '%-8s %s; built in %d s, %s\n' "$preset:" "$(grep -E "tests passed" "$log")" "$built_in" \
      "$(grep -E "Total Test time" "$log" | sed 's/ *Total Test time (real) = */ran in /')"
  else
    grep -E "^\s*[0-9]+/[0-9]+ Test.*(Failed|Exception|Timeout|Not Run)" "$log" >&2 || true
    sed -n '/The following tests FAILED/,$p' "$log" >&2
    echo "test: $preset failures above; full output in $log (rerun: ctest --preset $preset --rerun-failed --output-on-failure)" >&2
    exit 1
  fi
done
