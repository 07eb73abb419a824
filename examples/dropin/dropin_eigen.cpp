// dropin_eigen: an ordinary Eigen training loop (softmax regression by minibatch SGD), and the few
// lines alloy adds to it so that the model learns task after task without forgetting (the lines
// marked "alloy").
//
// MNIST tasks learned in sequence (split MNIST by default: five tasks of two digits; permuted
// MNIST with --protocol permuted);
// after each task the model is tested on every task so far, as 10-way classification. Without alloy, each task overwrites the last.
// With alloy: the weights are an eigen_store (zero-copy views of the matrices); a global model G
// is kept (continual_merger); each task trains from G while PAM resets the weights that turn
// against G's strongest entries; at the end of the task they are merged into G (running mean).
//
//   dropin_eigen [DATASETS_DIR] [--protocol split|permuted] [--tasks N] [--epochs N] [--seed N]

#include <Eigen/Core>

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

#include "alloy/alloy.hpp"
#include "alloy/eigen/eigen_store.hpp"
#include "dropin_common.hpp"

using namespace alloy_examples;

namespace {

using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct softmax_regression {
  matrix weight = matrix::Zero(mnist_classes, mnist_pixels);  // [classes, pixels], as a torch Linear
  Eigen::VectorXf bias = Eigen::VectorXf::Zero(mnist_classes);

  [[nodiscard]] matrix logits(const matrix& x) const { return (x * weight.transpose()).rowwise() + bias.transpose(); }
};

matrix images_of(const image_set& data, const std::vector<std::size_t>& indices) {
  matrix x(indices.size(), mnist_pixels);
  for (std::size_t i = 0; i < indices.size(); ++i) {
    x.row(static_cast<Eigen::Index>(i)) = Eigen::Map<const Eigen::RowVectorXf>(data.image(indices[i]), mnist_pixels);
  }
  return x;
}

double accuracy(const softmax_regression& model, const image_set& data, const std::vector<std::size_t>& indices) {
  const matrix z = model.logits(images_of(data, indices));
  std::size_t correct = 0;
  for (Eigen::Index i = 0; i < z.rows(); ++i) {
    Eigen::Index best = 0;
    z.row(i).maxCoeff(&best);
    correct += best == data.labels[indices[static_cast<std::size_t>(i)]] ? 1u : 0u;
  }
  return 100.0 * static_cast<double>(correct) / static_cast<double>(indices.size());
}

accuracy_rows run(const task_sequence& tasks, const dropin_options& options, method how) {
  std::mt19937 engine(options.seed);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  softmax_regression model;
  model.weight = model.weight.unaryExpr([&](float) { return normal(engine); });

  const bool merge = how != method::fine_tuning;
  const bool align = how == method::merging_with_pam;

  alloy::eigen_adapter::eigen_store weights;                      // alloy: the model's matrices, in place
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
        const matrix x = images_of(data, pick);
        matrix p = model.logits(x);
        for (Eigen::Index i = 0; i < p.rows(); ++i) {  // softmax minus one-hot: d loss / d logits
          p.row(i) = (p.row(i).array() - p.row(i).maxCoeff()).exp();
          p.row(i) /= p.row(i).sum();
          p(i, data.labels[pick[static_cast<std::size_t>(i)]]) -= 1.0f;
        }
        const float scale = learning_rate / static_cast<float>(pick.size());
        model.weight -= scale * p.transpose() * x;
        model.bias -= scale * p.colwise().sum().transpose();
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
  return run_dropin("dropin_eigen", argc, argv, [](const dropin_options&) { return std::string("softmax regression, SGD 0.05"); }, run);
}
