// The continual merger and PAM over a simulated sequence of 100 tasks: per task, the global
// weights G are handed out (begin_task), "fine-tuned" (a deterministic perturbation standing in for
// training), aligned with PAM against G's top-p masks (set_global + align), and merged back
// (end_task). Measures each stage's time per task and the process's resident memory after each
// task, which must stay flat: the merger keeps G, G0 (policy rule) and one task copy, whatever the
// number of tasks.
//
// Baseline in the same process: a STREAM-like triad over the model's parameters (`vs_triad`: the
// running-mean merge's bytes per second over the triad's).
// With ALLOY_CONTINUAL_CSV=path, each sequence's per-task figures are appended to that file.

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "alloy/align/pam.hpp"
#include "alloy/continual/continual_merger.hpp"
#include "alloy/merge/registry.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double resident_megabytes() {
  std::ifstream statm("/proc/self/statm");
  long pages_total = 0, pages_resident = 0;
  statm >> pages_total >> pages_resident;
  return static_cast<double>(pages_resident) * static_cast<double>(sysconf(_SC_PAGESIZE)) / 1e6;
}

double milliseconds_since(clock_type::time_point start) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

// A model of `tensors` f32 tensors of `elements` each, values in [-0.5, 0.5).
alloy::memory_store initial_model(std::size_t tensors, std::size_t elements) {
  alloy::memory_store model;
  for (std::size_t t = 0; t < tensors; ++t) {
    const auto view = model.insert("layers." + std::to_string(t) + ".weight", alloy::dtype::f32,
                                   {static_cast<std::int64_t>(elements)});
    auto* values = reinterpret_cast<float*>(view.data());
    for (std::size_t i = 0; i < elements; ++i) {
      values[i] = static_cast<float>((i * 2654435761u + t * 97u) % 1000) * 1e-3f - 0.5f;
    }
  }
  return model;
}

// Stands in for training on task `task`: a small deterministic change of every weight.
void fine_tune(alloy::memory_store& weights, std::size_t task) {
  for (const auto& name : weights.names()) {
    const auto view = weights.mutable_view(name);
    auto* values = reinterpret_cast<float*>(view.data());
    for (std::size_t i = 0; i < view.numel(); ++i) {
      values[i] += static_cast<float>(static_cast<int>((i * 40503u + task * 7919u) % 201) - 100) * 1e-4f;
    }
  }
}

double triad_bytes_per_second(std::size_t count, int threads) {
  std::vector<float> a(count), b(count, 1.0f), c(count, 2.0f);
  const alloy::cpu_backend backend{threads};
  double best = 0;
  for (int run = 0; run < 5; ++run) {
    const auto start = clock_type::now();
    alloy::for_each_chunk(backend, count, [&](std::size_t, std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) a[i] = b[i] + 3.0f * c[i];
    });
    benchmark::DoNotOptimize(a.data());
    best = std::max(best, 12.0 * static_cast<double>(count) / (milliseconds_since(start) / 1e3));
  }
  return best;
}

// args: parameters (millions), rule (0 running mean, 1 TIES policy), threads
void BM_continual_sequence(benchmark::State& state) {
  const auto parameters = static_cast<std::size_t>(state.range(0)) << 20;
  const bool ties = state.range(1) == 1;
  const int threads = static_cast<int>(state.range(2));
  constexpr std::size_t tensors = 8;
  constexpr std::size_t tasks = 100;
  alloy::continual_options settings;
  const alloy::cpu_backend backend{threads};
  if (ties) {
    settings.merge_rule = alloy::continual_rule::policy;
    settings.policy = alloy::merge_policy(alloy::task_vector_merge::ties());
    settings.policy_parameters.density = 0.3;
  }
  alloy::pam_options pam;
  pam.reset = alloy::pam_reset::to_global;
  const char* csv_path = std::getenv("ALLOY_CONTINUAL_CSV");
  std::FILE* csv = csv_path != nullptr ? std::fopen(csv_path, "a") : nullptr;
  double total_begin = 0, total_masks = 0, total_align = 0, total_end = 0;
  double rss_after_first = 0, rss_after_last = 0;
  for (auto _ : state) {
    alloy::continual_merger merger(initial_model(tensors, parameters / tensors), settings);
    alloy::pam_aligner aligner(pam);
    for (std::size_t task = 1; task <= tasks; ++task) {
      auto start = clock_type::now();
      alloy::memory_store weights = merger.begin_task();
      const double begin_ms = milliseconds_since(start);
      fine_tune(weights, task);
      start = clock_type::now();
      aligner.set_global(backend, merger.global());
      const double masks_ms = milliseconds_since(start);
      start = clock_type::now();
      (void)aligner.align(backend, merger.global(), weights);
      const double align_ms = milliseconds_since(start);
      start = clock_type::now();
      merger.end_task(backend, weights);
      const double end_ms = milliseconds_since(start);
      const double rss = resident_megabytes();
      if (task == 1) rss_after_first = rss;
      rss_after_last = rss;
      total_begin += begin_ms;
      total_masks += masks_ms;
      total_align += align_ms;
      total_end += end_ms;
      if (csv != nullptr) {
        std::fprintf(csv, "%s,%zu,%d,%zu,%.3f,%.3f,%.3f,%.3f,%.1f\n", ties ? "ties" : "running_mean", parameters >> 20,
                     threads, task, begin_ms, masks_ms, align_ms, end_ms, rss);
      }
    }
  }
  if (csv != nullptr) std::fclose(csv);
  const double per_task = static_cast<double>(tasks) * static_cast<double>(state.iterations());
  state.counters["begin_ms"] = total_begin / per_task;
  state.counters["pam_masks_ms"] = total_masks / per_task;
  state.counters["pam_align_ms"] = total_align / per_task;
  state.counters["merge_ms"] = total_end / per_task;
  state.counters["rss_first_MB"] = rss_after_first;
  state.counters["rss_last_MB"] = rss_after_last;
  // The running mean reads G and T and writes G: 12 bytes per parameter.
  const double merge_bytes_per_second = 12.0 * static_cast<double>(parameters) / (total_end / per_task / 1e3);
  state.counters["merge_vs_triad"] = merge_bytes_per_second / triad_bytes_per_second(parameters, threads);
}

}  // namespace

BENCHMARK(BM_continual_sequence)
    ->ArgNames({"Mparams", "ties", "threads"})
    ->Args({4, 0, 2})
    ->Args({4, 1, 2})
    ->Args({16, 0, 2})
    ->Iterations(1)
    ->Unit(benchmark::kSecond);

BENCHMARK_MAIN();
