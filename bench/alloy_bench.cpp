// alloy's benchmarks. Every throughput is also reported as a ratio to a baseline measured in this
// process: a memcpy of the same number of bytes (`vs_copy`) for conversions, a STREAM-like triad
// a = b + s c on the same thread count (`vs_triad`) for merges, so figures compare across machines.
// Bytes count the minimum traffic: every input read once, the output written once.

#include <algorithm>
#include <optional>
#include <set>
#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <benchmark/benchmark.h>

#include "alloy/core/convert.hpp"
#include "alloy/exec/cpu_features.hpp"
#include "alloy/merge/registry.hpp"
#include "alloy/store/memory_store.hpp"

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

// Bytes per second of a = b + s c over float arrays of `count` elements (3 arrays of traffic).
double measure_triad_bandwidth(std::size_t count, int threads) {
  std::vector<float> a(count), b(count, 1.0f), c(count, 2.0f);
  const alloy::cpu_backend backend{threads};
  double best = 0;
  for (int run = 0; run < 7; ++run) {
    const auto start = std::chrono::steady_clock::now();
    alloy::for_each_chunk(backend, count, [&](std::size_t, std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) a[i] = b[i] + 3.0f * c[i];
    });
    benchmark::DoNotOptimize(a.data());
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::max(best, 12.0 * static_cast<double>(count) / elapsed.count());
  }
  return best;
}

std::map<int, double> triad_bytes_per_second;  // by thread count

// A method at its defaults, or with one of them changed: "name" or "name:parameter=value".
std::string_view method_of(std::string_view spelled) { return spelled.substr(0, spelled.find(':')); }
alloy::merge_policy policy_named(std::string_view spelled) {
  const auto& method = alloy::find_merge_method(method_of(spelled));
  const auto colon = spelled.find(':');
  const auto equals = spelled.find('=');
  const std::string changed = colon == std::string_view::npos ? "" : std::string(spelled.substr(colon + 1, equals - colon - 1));
  const double value = changed.empty() ? 0.0 : std::stod(std::string(spelled.substr(equals + 1)));
  const alloy::parameter_lookup defaults = method.defaults([](std::string_view) { return 0.5; });  // t = 0.5 for slerp
  return method.make(alloy::parameter_lookup([&](std::string_view parameter) {
    return parameter == changed ? value : defaults.number(parameter);
  }, [&](std::string_view parameter) { return defaults.choice(parameter); }));
}

// A uniform number in [0, 1) from a 32-bit hash of x.
float uniform_hash(std::uint32_t x) {
  x ^= x >> 15;
  x *= 2246822519u;
  x ^= x >> 13;
  x *= 3266489917u;
  x ^= x >> 16;
  return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

// Element i of the base (seed 0) or of fine-tuned model `seed`: weights in [-0.02, 0.02) as a
// trained layer's, plus a task vector in [-0.001, 0.001), so magnitudes are distinct as real task
// vectors' are. bench/torch_baseline.py computes the same values.
float bench_value(std::uint32_t i, unsigned seed) {
  const float base = 0.04f * (uniform_hash(i * 2654435761u) - 0.5f);
  if (seed == 0) return base;
  return base + 0.002f * (uniform_hash(i * 2654435761u + seed * 40503u) - 0.5f);
}

// The inputs of the merges: a base and up to 16 fine-tuned models of one size and dtype, made
// once and kept while consecutive benchmarks use them (the grid is registered size by size).
// Each is a matrix of rows of 4096, as a transformer's linear layers are: the methods that work
// per row (DELLA, Arcee Fusion, the spherical ones, Model Stock) see rows of a real length.
constexpr std::int64_t row_length = 4096;  // every benchmarked size is a multiple

struct bench_inputs {
  std::int64_t count = 0;
  alloy::dtype type = alloy::dtype::f32;
  alloy::memory_store store;
  std::size_t models = 0;
};

bench_inputs& inputs_for(std::int64_t count, alloy::dtype type, std::size_t models) {
  static bench_inputs cached;
  if (cached.count != count || cached.type != type || cached.models < models) {
    cached.store = alloy::memory_store{};  // release the previous size first
    cached.count = count;
    cached.type = type;
    cached.models = std::max<std::size_t>(models, count <= (std::int64_t{1} << 24) ? 16 : 8);
    std::vector<float> values(static_cast<std::size_t>(count));
    const alloy::shape matrix{count / row_length, row_length};
    for (std::size_t seed = 0; seed <= cached.models; ++seed) {
      for (std::size_t i = 0; i < values.size(); ++i) values[i] = bench_value(static_cast<std::uint32_t>(i), static_cast<unsigned>(seed));
      alloy::convert(alloy::const_tensor_view(std::span<const float>(values), matrix),
                     cached.store.insert(seed == 0 ? "base" : std::to_string(seed - 1), type, matrix));
    }
    cached.store.insert("out", type, matrix);
  }
  return cached;
}

// args: elements, models, dtype (0 f32, 1 bf16, 2 f16), threads; `level` caps the dispatch level
// (the widest the CPU has by default). Each row's label says the level it ran at.
void BM_merge(benchmark::State& state, std::string_view method, alloy::simd_level level = alloy::detected_simd_level()) {
  const auto count = static_cast<std::int64_t>(state.range(0));
  const auto models = static_cast<std::size_t>(state.range(1));
  const alloy::dtype type = state.range(2) == 0 ? alloy::dtype::f32 : state.range(2) == 1 ? alloy::dtype::bf16 : alloy::dtype::f16;
  const int threads = static_cast<int>(state.range(3));
  if (level > alloy::detected_simd_level()) {
    state.SkipWithError("this CPU lacks the dispatch level");
    return;
  }
  const alloy::simd_level previous = alloy::set_simd_level(level);
  state.SetLabel(alloy::to_string(alloy::active_simd_level()));
  bench_inputs& data = inputs_for(count, type, models);
  std::vector<alloy::const_tensor_view> views;
  for (std::size_t i = 0; i < models; ++i) views.push_back(data.store.view(std::to_string(i)));
  const alloy::tensor_view out = *data.store.find_mutable("out");
  std::vector<alloy::model_parameters> parameters(models, alloy::model_parameters{1.0 / static_cast<double>(models), 0.3});
  const auto policy = policy_named(method);
  std::optional<alloy::const_tensor_view> base;  // read by the methods that use one
  if (alloy::find_merge_method(method_of(method)).uses_base()) base = data.store.view("base");
  const alloy::merge_inputs inputs{"bench.weight", base, views, parameters};
  const alloy::cpu_backend backend{threads};
  for (auto _ : state) {
    alloy::merge_with(policy, backend, inputs, out);
    benchmark::ClobberMemory();
  }
  const double bytes = static_cast<double>(count) * static_cast<double>(alloy::size_of(type)) *
                       static_cast<double>(models + (base ? 1 : 0) + 1);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
  auto& triad = triad_bytes_per_second[threads];
  if (triad == 0) triad = measure_triad_bandwidth(std::size_t{1} << 24, threads);
  state.counters["vs_triad"] = benchmark::Counter(bytes / triad * static_cast<double>(state.iterations()),
                                                  benchmark::Counter::kIsRate);
  alloy::set_simd_level(previous);
}

// The dispatch levels side by side: the linear-type merges and the methods issue 22's goals name
// (TIES, DARE, breadcrumbs, DELLA) at 16 Mi parameters, 4 models, f32, bf16 and f16, 2 threads,
// at every level the CPU has. Names read
// BM_dispatch/<policy>/elements:../models:../dtype:../threads:../level:..
void register_dispatch() {
  for (const char* method : {"linear", "task_arithmetic", "magmax", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                             "breadcrumbs_ties", "della"}) {
    auto* b = benchmark::RegisterBenchmark((std::string("BM_dispatch/") + method).c_str(),
                                           [method](benchmark::State& state) {
                                             BM_merge(state, method, static_cast<alloy::simd_level>(state.range(4)));
                                           });
    b->ArgNames({"elements", "models", "dtype", "threads", "level"});
    for (int type : {0, 1, 2}) {
      for (int level = 0; level <= static_cast<int>(alloy::detected_simd_level()); ++level) {
        b->Args({std::int64_t{1} << 24, 4, type, 2, level});
      }
    }
    b->Unit(benchmark::kMillisecond)->UseRealTime();
  }
}

// The grid: 1, 16, 64 and 256 Mi parameters (16 models at the two smaller sizes) x f32/bf16 x
// every policy x 2, 4, 8 models x 1 and 2 threads, size by size so that each size's inputs are
// made once. Names read BM_merge/<policy>/elements:../models:../bf16:../threads:..
void register_merges() {
  const char* const methods[] = {"linear", "task_arithmetic", "ties", "dare_ties", "magmax"};
  for (std::int64_t elements : {std::int64_t{1} << 20, std::int64_t{1} << 24, std::int64_t{1} << 26, std::int64_t{1} << 28}) {
    for (int bf16 : {0, 1}) {
      for (const char* method : methods) {
        auto* b = benchmark::RegisterBenchmark((std::string("BM_merge/") + method).c_str(),
                                               [method](benchmark::State& state) { BM_merge(state, method); });
        b->ArgNames({"elements", "models", "bf16", "threads"});
        for (std::int64_t models : {2, 4, 8, 16}) {
          if (models == 16 && elements > (std::int64_t{1} << 24)) continue;
          for (int threads : {1, 2}) b->Args({elements, models, bf16, threads});
        }
        b->Unit(benchmark::kMillisecond)->UseRealTime();
      }
    }
  }
}


// Every other method of the registry (mergekit's newer ones among them) at one size: 16 Mi
// parameters, f32 and bf16, 4 models (or as many as the method takes), 2 threads.
void register_methods() {
  const std::set<std::string_view> in_grid{"linear", "task_arithmetic", "ties", "dare_ties", "magmax"};
  for (int bf16 : {0, 1}) {
    for (const auto& method : alloy::merge_methods()) {
      if (in_grid.contains(method.name)) continue;
      const std::string_view name = method.name;
      auto* b = benchmark::RegisterBenchmark((std::string("BM_method/") + std::string(name)).c_str(),
                                             [name](benchmark::State& state) { BM_merge(state, name); });
      b->ArgNames({"elements", "models", "bf16", "threads"});
      const std::size_t models = std::clamp<std::size_t>(4, method.min_models, method.max_models);
      b->Args({std::int64_t{1} << 24, static_cast<std::int64_t>(models), bf16, 2});
      b->Unit(benchmark::kMillisecond)->UseRealTime();
    }
    // SCE as configs use it: with its variance selection (the default, 1, selects nothing).
    auto* b = benchmark::RegisterBenchmark("BM_method/sce:select_topk=0.1",
                                           [](benchmark::State& state) { BM_merge(state, "sce:select_topk=0.1"); });
    b->ArgNames({"elements", "models", "bf16", "threads"});
    b->Args({std::int64_t{1} << 24, 4, bf16, 2});
    b->Unit(benchmark::kMillisecond)->UseRealTime();
  }
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
  benchmark::AddCustomContext("simd_level", alloy::to_string(alloy::detected_simd_level()));
  register_merges();
  register_methods();
  register_dispatch();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
