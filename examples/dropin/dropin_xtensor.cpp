// dropin_xtensor: an ordinary xtensor training loop (softmax regression by minibatch SGD, written
// with xtensor expressions), and the few lines alloy adds to it so that the model learns task after
// task with less forgetting (the lines marked "alloy").
//
// MNIST tasks learned in sequence (split MNIST by default: five tasks of two digits; permuted
// MNIST with --protocol permuted);
// after each task the model is tested on every task so far, as 10-way classification. Without alloy, each task overwrites the last.
// With alloy: the containers are an xtensor_store (zero-copy views); a global model G is kept
// (continual_merger); each task trains from G while PAM resets the weights that turn against G's
// strongest entries; at the end of the task they are merged into G (running mean).
//
//   dropin_xtensor [DATASETS_DIR] [--protocol split|permuted] [--tasks N] [--epochs N] [--seed N]

#include <xtensor/xadapt.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

#include "alloy/alloy.hpp"
#include "alloy/xtensor/xtensor_store.hpp"
#include "dropin_common.hpp"

using namespace alloy_examples;

namespace {

struct softmax_regression {
  xt::xtensor<float, 2> weight = xt::zeros<float>({mnist_classes, mnist_pixels});  // [classes, pixels]
  xt::xtensor<float, 1> bias = xt::zeros<float>({mnist_classes});

  // [n, pixels] -> [n, classes]: sum over pixels of x[n, newaxis, :] * weight[newaxis, :, :].
  [[nodiscard]] xt::xtensor<float, 2> logits(const xt::xtensor<float, 2>& x) const {
    return xt::sum(xt::view(x, xt::all(), xt::newaxis(), xt::all()) * weight, {2}) + bias;
  }
};

xt::xtensor<float, 2> images_of(const image_set& data, const std::vector<std::size_t>& indices) {
  xt::xtensor<float, 2> x = xt::empty<float>({indices.size(), mnist_pixels});
  for (std::size_t i = 0; i < indices.size(); ++i) {
    xt::view(x, i, xt::all()) = xt::adapt(data.image(indices[i]), mnist_pixels, xt::no_ownership(),
                                          std::array<std::size_t, 1>{mnist_pixels});
  }
  return x;
}

double accuracy(const softmax_regression& model, const image_set& data, const std::vector<std::size_t>& indices) {
  // (Row maxima by hand: xt::argmax trips GCC 12's -Warray-bounds inside xtensor 0.24.)
  const xt::xtensor<float, 2> z = model.logits(images_of(data, indices));
  std::size_t correct = 0;
  for (std::size_t i = 0; i < indices.size(); ++i) {
    const auto row = xt::view(z, i, xt::all());
    const auto predicted = std::max_element(row.begin(), row.end()) - row.begin();
    correct += predicted == data.labels[indices[i]] ? 1u : 0u;
  }
  return 100.0 * static_cast<double>(correct) / static_cast<double>(indices.size());
}

accuracy_rows run(const task_sequence& tasks, const dropin_options& options, method how) {
  std::mt19937 engine(options.seed);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  softmax_regression model;
  std::generate(model.weight.begin(), model.weight.end(), [&] { return normal(engine); });

  const bool merge = how != method::fine_tuning;
  const bool align = how == method::merging_with_pam;

  alloy::xtensor_adapter::xtensor_store weights;                  // alloy: the model's containers, in place
  weights.add("weight", model.weight);
  weights.add("bias", model.bias);
  const alloy::cpu_backend cpu{};                                 // alloy: where merges and PAM run
  alloy::continual_merger merger(alloy::copy_store(weights));     // alloy: G, the global model
  alloy::pam_aligner aligner({.p = 0.5, .every = 10});            // alloy: PAM every 10 steps

  accuracy_rows rows;
  constexpr std::size_t batch = 32;
  constexpr float learning_rate = 0.05f;
  for (std::size_t task = 0; task < tasks.size(); ++task) {
    const image_set& data = tasks.train[task];
    std::vector<std::size_t> train(data.size());
    std::iota(train.begin(), train.end(), std::size_t{0});
    if (merge) alloy::assign(weights, merger.global());  // alloy: the task starts from G
    if (align) aligner.set_global(cpu, merger.global());      // alloy: G's top-p masks, once per task
    for (int epoch = 0; epoch < options.epochs; ++epoch) {
      std::shuffle(train.begin(), train.end(), engine);
      for (std::size_t start = 0; start < train.size(); start += batch) {
        const std::vector<std::size_t> pick(train.begin() + static_cast<std::ptrdiff_t>(start),
                                            train.begin() + static_cast<std::ptrdiff_t>(std::min(train.size(), start + batch)));
        const xt::xtensor<float, 2> x = images_of(data, pick);
        const xt::xtensor<float, 2> z = model.logits(x);
        const xt::xtensor<float, 2> e = xt::exp(z - xt::view(xt::amax(z, {1}), xt::all(), xt::newaxis()));
        xt::xtensor<float, 2> p = e / xt::view(xt::sum(e, {1}), xt::all(), xt::newaxis());
        for (std::size_t i = 0; i < pick.size(); ++i) p(i, static_cast<std::size_t>(data.labels[pick[i]])) -= 1.0f;
        const float scale = learning_rate / static_cast<float>(pick.size());
        // d loss / d weight = p^T x: sum over the batch of p[:, :, newaxis] * x[:, newaxis, :].
        model.weight -= scale * xt::sum(xt::view(p, xt::all(), xt::all(), xt::newaxis()) *
                                            xt::view(x, xt::all(), xt::newaxis(), xt::all()), {0});
        model.bias -= scale * xt::sum(p, {0});
        if (align && aligner.step()) aligner.align(cpu, merger.global(), weights);  // alloy: every 10th step, align T with G
      }
    }
    if (merge) {
      merger.end_task(cpu, weights);                 // alloy: G <- mean of the tasks' weights
      alloy::assign(weights, merger.global());  // alloy: evaluate G
    }
    std::vector<double> row;
    for (std::size_t seen = 0; seen <= task; ++seen) {
      std::vector<std::size_t> all(tasks.test[seen].size());
      std::iota(all.begin(), all.end(), std::size_t{0});
      row.push_back(accuracy(model, tasks.test[seen], all));
    }
    rows.push_back(row);
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  return run_dropin("dropin_xtensor", argc, argv, [](const dropin_options&) { return std::string("softmax regression, SGD 0.05"); }, run);
}
