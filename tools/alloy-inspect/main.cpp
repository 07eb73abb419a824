// alloy-inspect: validates a safetensors model (file, sharded folder or index) and lists its
// tensors, optionally with value statistics. Exit status 0 when the model is valid, 1 otherwise.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "alloy/alloy.hpp"
#include "human_bytes.hpp"

namespace {

struct tensor_stats {
  double min = std::numeric_limits<double>::infinity();
  double max = -std::numeric_limits<double>::infinity();
  double mean = 0;
  double rms = 0;
  std::size_t non_finite = 0;
};

tensor_stats statistics(alloy::const_tensor_view view) {
  tensor_stats stats;
  double sum = 0;
  double sum_squares = 0;
  std::size_t finite = 0;
  for (std::size_t i = 0; i < view.numel(); ++i) {
    const auto value = static_cast<double>(alloy::load_as_float(view, i));
    if (!std::isfinite(value)) {
      ++stats.non_finite;
      continue;
    }
    stats.min = std::min(stats.min, value);
    stats.max = std::max(stats.max, value);
    sum += value;
    sum_squares += value * value;
    ++finite;
  }
  if (finite > 0) {
    stats.mean = sum / static_cast<double>(finite);
    stats.rms = std::sqrt(sum_squares / static_cast<double>(finite));
  }
  return stats;
}

std::string human_bytes(std::size_t bytes) { return alloy::tools::human_bytes(static_cast<double>(bytes), true); }

std::string shape_text(const alloy::shape& dims) {
  std::ostringstream out;
  out << dims;
  return out.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Validate a safetensors model and list its tensors"};
  std::string path;
  bool with_stats = false;
  bool as_json = false;
  app.add_option("MODEL", path, "a .safetensors file, a model folder, or a .safetensors.index.json")
      ->required();
  app.add_flag("--stats", with_stats, "compute min, max, mean, RMS and non-finite count of floating tensors");
  app.add_flag("--json", as_json, "print one JSON document instead of a table");
  CLI11_PARSE(app, argc, argv);

  try {
    const auto store = alloy::safetensors_store::open(path);
    std::map<std::string, std::size_t> count_by_dtype;
    nlohmann::ordered_json report;
    report["model"] = store.description();
    report["files"] = store.shards().size();
    report["metadata"] = store.metadata();
    report["tensors"] = nlohmann::ordered_json::array();
    std::size_t total = 0;
    std::size_t parameters = 0;
    for (const auto& name : store.names()) {
      const auto view = store.view(name);
      total += view.byte_size();
      parameters += view.numel();
      ++count_by_dtype[std::string(alloy::name(view.dtype()))];
      nlohmann::ordered_json tensor{{"name", name},
                                    {"dtype", std::string(alloy::name(view.dtype()))},
                                    {"shape", std::vector<std::int64_t>(view.shape().begin(), view.shape().end())},
                                    {"bytes", view.byte_size()}};
      if (with_stats && alloy::is_floating(view.dtype()) && view.dtype() != alloy::dtype::f8_e4m3 &&
          view.dtype() != alloy::dtype::f8_e5m2) {
        const auto stats = statistics(view);
        tensor["min"] = stats.min;
        tensor["max"] = stats.max;
        tensor["mean"] = stats.mean;
        tensor["rms"] = stats.rms;
        tensor["non_finite"] = stats.non_finite;
        store.release(name);
      }
      report["tensors"].push_back(std::move(tensor));
    }
    report["parameters"] = parameters;
    report["bytes"] = total;

    if (as_json) {
      std::cout << report.dump(2) << "\n";
      return 0;
    }
    std::cout << store.description() << ": " << store.size() << " tensors, " << parameters
              << " parameters, " << human_bytes(total) << " in " << store.shards().size() << " file"
              << (store.shards().size() == 1 ? "" : "s") << "\n";
    for (const auto& [key, value] : store.metadata()) std::cout << "  metadata " << key << " = " << value << "\n";
    for (const auto& [type, count] : count_by_dtype) std::cout << "  " << type << ": " << count << " tensors\n";
    for (const auto& tensor : report["tensors"]) {
      std::printf("  %-60s %-5s %-20s %10s", tensor["name"].get<std::string>().c_str(),
                  tensor["dtype"].get<std::string>().c_str(),
                  shape_text(alloy::shape(tensor["shape"].get<std::vector<std::int64_t>>())).c_str(),
                  human_bytes(tensor["bytes"].get<std::size_t>()).c_str());
      if (tensor.contains("mean")) {
        std::printf("  min %-11.4g max %-11.4g mean %-11.4g rms %-11.4g", tensor["min"].get<double>(),
                    tensor["max"].get<double>(), tensor["mean"].get<double>(), tensor["rms"].get<double>());
        if (tensor["non_finite"].get<std::size_t>() > 0) {
          std::printf(" non-finite %zu", tensor["non_finite"].get<std::size_t>());
        }
      }
      std::printf("\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "alloy-inspect: " << e.what() << "\n";
    return 1;
  }
}
