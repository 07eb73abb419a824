#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: builds alloy with its CUDA backend (and LibTorch, where Python's
# torch is installed), then runs every test labelled gpu and prints the CUDA backend's comparison
# against the CPU. With --bench it also runs the GPU benchmarks (bench/cuda_bench) and writes their
# JSON into $OUT (default build/gpu-out; ALLOY_BENCH_FILTER narrows them, as --benchmark_filter).
# With --cli-bench it times alloy-merge on 1.2 GB models with --device cpu and --device cuda. With
# --all it runs the whole test suite there too.
#
# Build dependencies that the GPU image lacks are read from .gpu_deps (scripts/gpu_deps.sh makes
# it on a Debian machine); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=0
all=0
cli_bench=0
for argument in "$@"; do
  case $argument in
    --bench) bench=1 ;;
    --all) all=1 ;;
    --cli-bench) cli_bench=1 ;;
    *) echo "usage: scripts/gpu_check.sh [--bench] [--cli-bench] [--all]" >&2; exit 2 ;;
  esac
done
deps=$PWD/${ALLOY_GPU_DEPS:-.gpu_deps}
out=${OUT:-$PWD/build/gpu-out}
build=build/gpu
mkdir -p "$out"
export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python=$(command -v python3)
torch_prefix=$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null || true)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$deps/usr;$torch_prefix" \
  -Dyaml-cpp_DIR="$deps/usr/lib/x86_64-linux-gnu/cmake/yaml-cpp" \
  -Dbenchmark_DIR="$deps/usr/lib/x86_64-linux-gnu/cmake/benchmark" \
  -DALLOY_WITH_CUDA=ON -DALLOY_BUILD_EXAMPLES=OFF -DALLOY_REFERENCE_PYTHON="$python" \
  -DCMAKE_CUDA_ARCHITECTURES=90 >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
grep -E "^-- alloy" "$out/configure.log" || true
cmake --build "$build" -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -E "error|Error" -A5 "$out/build.log" | head -80; exit 1; }
echo "built"
status=0
"$build"/tests/alloy_cuda_tests 2>&1 | tee "$out/cuda_tests.log" | grep -Ev "^\s*$" | tail -60 || status=1
if [[ $all == 1 ]]; then
  ctest --test-dir "$build" -j "$(nproc)" --output-on-failure >"$out/ctest.log" 2>&1 || status=1
else
  ctest --test-dir "$build" -L gpu --output-on-failure >"$out/ctest.log" 2>&1 || status=1
fi
tail -25 "$out/ctest.log"
if [[ $bench == 1 && -x $build/bench/cuda_bench ]]; then
  "$build"/bench/cuda_bench --benchmark_out="$out/cuda_bench.json" --benchmark_out_format=json \
    --benchmark_filter="${ALLOY_BENCH_FILTER:-.}" 2>&1 | tee "$out/cuda_bench.txt" | grep -E "^device" || true
  "$python" bench/cuda_table.py "$out/cuda_bench.json" | tee "$out/cuda_table.md"
fi
if [[ $cli_bench == 1 ]]; then
  for device in cpu cuda; do
    echo "alloy-merge --device $device:"
    "$python" bench/merge_cli_bench.py "$build"/tools/alloy-merge "$build/cli-bench" --gigabytes 1.1 \
      --methods linear,ties,dare_ties --device "$device" 2>&1 | tee -a "$out/cli_bench.txt"
  done
fi
exit $status
