// alloy's benchmarks. Every throughput is also reported as a ratio to a copy of the same number
// of bytes measured in this process (`vs_copy`), so figures compare across machines.
//
// Today: dtype conversion of whole tensors (the store layer's contribution to a merge). The merge
// policies add their own benchmarks here.

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include <benchmark/benchmark.h>

#include "alloy/core/convert.hpp"

namespace {

double copy_bytes_per_second = 0;

// Bytes per second of memcpy (read + write counted) over `bytes`, best of several runs.
double measure_copy_bandwidth(std::size_t bytes) {
  std::vector<std::byte> source(bytes, std::byte{1});
  std::vector<std::byte> target(bytes);
  double best = 0;
  for (int run = 0; run < 7; ++run) {
    const auto start = std::chrono::steady_clock::now();
    std::memcpy(target.data(), source.data(), bytes);
    benchmark::DoNotOptimize(target.data());
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::max(best, 2.0 * static_cast<double>(bytes) / elapsed.count());
  }
  return best;
}

template <class From, class To>
void BM_convert(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  std::vector<From> source(count);
  for (std::size_t i = 0; i < count; ++i) source[i] = From(static_cast<float>(i % 1000) * 0.001f);
  std::vector<To> target(count);
  const alloy::const_tensor_view in(std::span<const From>(source), alloy::shape{static_cast<std::int64_t>(count)});
  const alloy::tensor_view out(std::span<To>(target), alloy::shape{static_cast<std::int64_t>(count)});
  for (auto _ : state) {
    alloy::convert(in, out);
    benchmark::DoNotOptimize(target.data());
    benchmark::ClobberMemory();
  }
  const double bytes = static_cast<double>(count * (sizeof(From) + sizeof(To)));
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
  state.counters["vs_copy"] = benchmark::Counter(bytes / copy_bytes_per_second * static_cast<double>(state.iterations()),
                                                 benchmark::Counter::kIsRate);
}

void BM_copy(benchmark::State& state) {
  const auto count = static_cast<std::size_t>(state.range(0));
  std::vector<float> source(count, 1.0f);
  std::vector<float> target(count);
  for (auto _ : state) {
    std::memcpy(target.data(), source.data(), count * sizeof(float));
    benchmark::DoNotOptimize(target.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(2 * count * sizeof(float)) * state.iterations());
}

}  // namespace

BENCHMARK(BM_copy)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_convert, float, alloy::bfloat16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_convert, alloy::bfloat16, float)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_convert, float, alloy::float16)->Arg(1 << 24);
BENCHMARK_TEMPLATE(BM_convert, alloy::float16, float)->Arg(1 << 24);

int main(int argc, char** argv) {
  copy_bytes_per_second = measure_copy_bandwidth(std::size_t{256} << 20);
  benchmark::AddCustomContext("copy_GBps", std::to_string(copy_bytes_per_second / 1e9));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
