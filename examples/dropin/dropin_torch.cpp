// dropin_torch: an ordinary LibTorch training loop, and the few lines alloy adds to it so that the
// model learns task after task with less forgetting (the lines marked "alloy").
//
// MNIST tasks learned in sequence by a small MLP (split MNIST by default: five tasks of two digits;
// permuted MNIST with --protocol permuted); after each task the model is tested on every task so
// far, as 10-way classification. Without alloy, each task overwrites the last. With alloy: a
// global model G is kept (continual_merger); each task trains from G while PAM resets the weights
// that turn against G's strongest entries, and the optimizer's state there (momentum, or Adam's
// moments); at the end of the task the trained weights are merged into G (running mean).
//
//   dropin_torch [DATASETS_DIR] [--protocol split|permuted] [--tasks N] [--epochs N] [--seed N]
//                [--optimizer sgd|adam]
//
// Data parallel as PyTorch users run it (built with alloy::torch_distributed): started by torchrun,
// or with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set by hand, each rank trains on its shard
// of every batch (the lines marked "data parallel"); rank 0 prints.
//
//   torchrun --nproc-per-node 2 --no-python dropin_torch DATASETS_DIR

#include <torch/torch.h>

#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

#include "alloy/torch.hpp"
#include "dropin_common.hpp"

using namespace alloy_examples;

namespace {

::torch::Tensor images_of(const image_set& data) {
  return ::torch::tensor(at::ArrayRef<float>(data.images)).view({static_cast<std::int64_t>(data.size()), 784});
}

::torch::Tensor labels_of(const image_set& data) {
  return ::torch::tensor(at::ArrayRef<int>(data.labels)).to(::torch::kInt64);
}

double accuracy(::torch::nn::Sequential& model, const image_set& data) {
  ::torch::NoGradGuard no_grad;
  return 100.0 * model->forward(images_of(data)).argmax(1).eq(labels_of(data)).to(::torch::kFloat64).mean().item<double>();
}

std::unique_ptr<::torch::optim::Optimizer> make_optimizer(const std::string& name, ::torch::nn::Sequential& model) {
  if (name == "adam") return std::make_unique<::torch::optim::Adam>(model->parameters(), ::torch::optim::AdamOptions(1e-3));
  return std::make_unique<::torch::optim::SGD>(model->parameters(), ::torch::optim::SGDOptions(0.01).momentum(0.9));
}

// data parallel: one process, or the ranks of the launcher's environment.
const alloy::torch_adapter::data_parallel& ranks() {
  static const auto group = alloy::torch_adapter::data_parallel::from_environment();
  return group;
}

accuracy_rows run(const task_sequence& tasks, const dropin_options& options, method how) {
  const auto& group = ranks();
  ::torch::manual_seed(options.seed);  // (the same initial weights and batch orders on every rank)
  ::torch::nn::Sequential model(::torch::nn::Linear(784, 128), ::torch::nn::ReLU(), ::torch::nn::Linear(128, 10));
  const bool merge = how != method::fine_tuning;
  const bool align = how == method::merging_with_pam;

  alloy::continual_merger merger(alloy::torch_adapter::snapshot(*model));  // alloy: G, the global model
  alloy::torch_adapter::pam_aligner aligner({.p = 0.5, .every = 10});    // alloy: PAM every 10 steps

  accuracy_rows rows;
  for (std::size_t task = 0; task < tasks.size(); ++task) {
    if (merge) alloy::torch_adapter::assign(*model, merger.global());  // alloy: the task starts from G
    if (align) aligner.set_global(merger.global());                     // alloy: G's top-p masks, once per task
    const auto optimizer = make_optimizer(options.optimizer, model);
    const ::torch::Tensor x = images_of(tasks.train[task]), y = labels_of(tasks.train[task]);
    constexpr std::int64_t batch = 32;
    for (int epoch = 0; epoch < options.epochs; ++epoch) {
      const ::torch::Tensor order = ::torch::randperm(x.size(0));
      for (std::int64_t start = 0; start < x.size(0); start += batch) {
        const std::int64_t count = std::min(batch, x.size(0) - start);
        const auto [begin, end] = group.shard(count);                         // data parallel: this rank's part
        const ::torch::Tensor pick = order.slice(0, start + begin, start + end);
        optimizer->zero_grad();
        if (end > begin) {
          const double share = static_cast<double>(end - begin) / static_cast<double>(count);  // data parallel
          (::torch::nn::functional::cross_entropy(model->forward(x.index_select(0, pick)), y.index_select(0, pick)) * share)
              .backward();
        }
        group.sum_gradients(model->parameters());  // data parallel: the whole batch's gradient on every rank
        optimizer->step();
        if (align) aligner.step(*model, *optimizer);  // alloy: every 10th step, align T with G
      }
    }
    // data parallel: every rank holds the same bits, so each merges them as one process would.
    group.check_same(alloy::torch_adapter::fingerprint(model->parameters()), "the weights trained on a task");
    if (merge) {
      merger.end_task(alloy::cpu_backend{}, alloy::torch_adapter::tensor_store::from_module(*model));  // alloy: G <- mean of the tasks
      alloy::torch_adapter::assign(*model, merger.global());                   // alloy: evaluate G
    }
    std::vector<double> row;
    for (std::size_t seen = 0; seen <= task; ++seen) row.push_back(accuracy(model, tasks.test[seen]));
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (!ranks().is_root() && std::freopen("/dev/null", "w", stdout) == nullptr) return 1;  // data parallel: rank 0 prints
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dropin_torch: %s\n", e.what());
    return 1;
  }
  return run_dropin("dropin_torch", argc, argv, [](const dropin_options& o) {
        return std::string("MLP 784-128-10, ") + (o.optimizer == "adam" ? "Adam 1e-3" : "SGD 0.01 momentum 0.9");
      }, run);
}
