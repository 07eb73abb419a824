// The cost of alignment inside a LibTorch training loop, as a fraction of the training step it
// rides on (the design's goal: under 5%). Baseline, measured in this process: one SGD step
// (momentum 0.9, batch 32) of an MLP 784-H-10 on random inputs. Measured against it:
//   pam_align            one PAM pass (p = 0.5, reset to zero) over the whole model, with the
//                        optimizer state reset, by alloy's CPU backend on the parameters' memory;
//                        PAM runs every K steps, so its share of training is this / K
//   regularized_step     the same training step with l2_pull + sign_agreement added to the loss
// docs/benchmarks.md divides each time by BM_train_step's of the same width, from the same run.

#include <torch/torch.h>

#include <memory>

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

void BM_train_step(benchmark::State& state) {
  setup s(state.range(0));
  for (auto _ : state) s.step();
}

void BM_pam_align(benchmark::State& state) {
  setup s(state.range(0));
  s.step();  // the optimizer has state to reset
  ta::pam_aligner aligner({.p = 0.5, .every = 1});
  aligner.set_global(s.global);
  for (auto _ : state) benchmark::DoNotOptimize(aligner.align(*s.model, s.optimizer.get()).total_reset);
}

void BM_regularized_step(benchmark::State& state) {
  setup s(state.range(0));
  const ta::alignment_target target(s.global, 0.5, ::torch::kCPU);
  for (auto _ : state) s.step(ta::l2_pull(*s.model, target, 1e-3) + ta::sign_agreement(*s.model, target, 1e-3));
}

}  // namespace

BENCHMARK(BM_train_step)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_pam_align)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_regularized_step)->Arg(128)->Arg(1024)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK_MAIN();
