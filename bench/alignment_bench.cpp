// The cost of alignment inside a LibTorch training loop, as a fraction of the training step it
// rides on (the design's goal: under 5%). Baseline, measured in this process: one SGD step
// (momentum 0.9, batch 32) of an MLP 784-H-10 on random inputs. Measured against it:
//   pam_align/<engine>   one PAM pass (p = 0.5, reset to zero) over the whole model, with the
//                        optimizer state reset, by alloy's CPU kernels or by torch operations;
//                        PAM runs every K steps, so its share of training is this / K
//   regularized_step     the same training step with l2_pull + sign_agreement added to the loss
// Counter `vs_step`: time per iteration divided by the baseline step's.

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>

#include "alloy/torch.hpp"

namespace {

namespace ta = alloy::torch_adapter;

struct setup {
  ::torch::nn::Sequential model;
  std::unique_ptr<::torch::optim::SGD> optimizer;
  ::torch::Tensor x, y;
  alloy::memory_store global;

  explicit setup(std::int64_t hidden) {
    ::torch::manual_seed(1);
    model = ::torch::nn::Sequential(::torch::nn::Linear(784, hidden), ::torch::nn::ReLU(), ::torch::nn::Linear(hidden, 10));
    global = ta::snapshot(*::torch::nn::Sequential(::torch::nn::Linear(784, hidden), ::torch::nn::ReLU(),
                                                   ::torch::nn::Linear(hidden, 10)));
    optimizer = std::make_unique<::torch::optim::SGD>(model->parameters(), ::torch::optim::SGDOptions(0.01).momentum(0.9));
    x = ::torch::rand({32, 784});
    y = ::torch::randint(0, 10, {32});
  }

  void step(const ::torch::Tensor& extra_loss = {}) {
    optimizer->zero_grad();
    ::torch::Tensor loss = ::torch::nn::functional::cross_entropy(model->forward(x), y);
    if (extra_loss.defined()) loss = loss + extra_loss;
    loss.backward();
    optimizer->step();
  }
};

// Seconds per plain training step for this width, measured once per process (median of 9 x 20 steps).
double step_seconds(std::int64_t hidden) {
  static std::map<std::int64_t, double> cache;
  if (auto it = cache.find(hidden); it != cache.end()) return it->second;
  setup s(hidden);
  for (int i = 0; i < 20; ++i) s.step();
  std::vector<double> runs;
  for (int run = 0; run < 9; ++run) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 20; ++i) s.step();
    runs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 20);
  }
  std::nth_element(runs.begin(), runs.begin() + 4, runs.end());
  return cache[hidden] = runs[4];
}

void report(benchmark::State& state, std::int64_t hidden) {
  // (iterations / elapsed / step)^-1: wall seconds per iteration over the baseline step's.
  state.counters["vs_step"] = benchmark::Counter(step_seconds(hidden), benchmark::Counter::kIsIterationInvariantRate |
                                                                           benchmark::Counter::kInvert);
}

void BM_train_step(benchmark::State& state) {
  setup s(state.range(0));
  for (auto _ : state) s.step();
  report(state, state.range(0));
}

void BM_pam_align(benchmark::State& state, ta::align_engine engine) {
  setup s(state.range(0));
  s.step();  // the optimizer has state to reset
  ta::pam_aligner aligner({.p = 0.5, .every = 1}, engine);
  aligner.set_global(s.global);
  for (auto _ : state) benchmark::DoNotOptimize(aligner.align(*s.model, s.optimizer.get()).total_reset);
  report(state, state.range(0));
}

void BM_regularized_step(benchmark::State& state) {
  setup s(state.range(0));
  const ta::alignment_target target(s.global, 0.5, ::torch::kCPU);
  for (auto _ : state) s.step(ta::l2_pull(*s.model, target, 1e-3) + ta::sign_agreement(*s.model, target, 1e-3));
  report(state, state.range(0));
}

}  // namespace

BENCHMARK(BM_train_step)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_pam_align, alloy_cpu, ta::align_engine::alloy_cpu)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_pam_align, torch_ops, ta::align_engine::torch_ops)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_regularized_step)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_MAIN();
