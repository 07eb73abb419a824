#pragma once
// The one table of merge methods: config names, parameters, defaults, and how each builds its
// policy. The recipe, the CLI, the docs and the tests all read it (as mergekit's registry.py).

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/merge/linear_merge.hpp"
#include "alloy/merge/magmax_merge.hpp"
#include "alloy/merge/model_stock_merge.hpp"
#include "alloy/merge/slerp_merge.hpp"
#include "alloy/merge/task_vector_merge.hpp"

namespace alloy {

using merge_policy = std::variant<linear_merge, task_vector_merge, magmax_merge, slerp_merge, model_stock_merge>;

// Runs `policy` on `backend`. With the CUDA backend, a translation unit that nvcc does not compile
// calls alloy::cuda::merge_with (adapters/cuda), which this same template instantiates on the GPU.
template <class Backend>
void merge_with(const merge_policy& policy, const Backend& backend, const merge_inputs& in, tensor_view output) {
  std::visit([&](const auto& p) { p.merge(backend, in, output); }, policy);
}

struct parameter_definition {
  enum class scope : std::uint8_t { method, model };  // once per merge, or once per model
  std::string_view name;
  scope where = scope::method;
  std::optional<double> default_value;  // none: required
  std::string_view meaning;
  double minimum = -std::numeric_limits<double>::infinity();  // the values a merge accepts
  double maximum = std::numeric_limits<double>::infinity();

  [[nodiscard]] bool accepts(double value) const noexcept {
    return std::isfinite(value) && value >= minimum && value <= maximum;
  }
};

// Resolves a method-scope parameter for the tensor being merged (default already applied).
using parameter_lookup = std::function<double(std::string_view)>;

struct method_definition {
  std::string_view name;
  bool needs_base = true;
  std::size_t min_models = 1;
  std::vector<parameter_definition> parameters;
  std::vector<std::string_view> consensus_choices;  // for the `consensus` option, if any
  std::function<merge_policy(const parameter_lookup&, std::string_view consensus)> make;

  [[nodiscard]] const parameter_definition* find(std::string_view parameter) const {
    for (const auto& p : parameters) {
      if (p.name == parameter) return &p;
    }
    return nullptr;
  }
};

namespace detail {

using scope = parameter_definition::scope;

inline std::vector<parameter_definition> task_vector_parameters(bool normalize, bool rescale, bool density,
                                                                bool random, bool gamma, bool epsilon) {
  std::vector<parameter_definition> p{
      {"weight", scope::model, std::nullopt, "scale of the model's task vector"},
      {"normalize", scope::method, normalize ? 1.0 : 0.0, "divide by the sum of (agreeing) weights"},
      {"lambda", scope::method, 1.0, "scale of the merged task vector"},
      {"int8_mask", scope::method, 0.0, "accepted for mergekit compatibility; alloy's masks are bits"},
  };
  if (density) {
    p.push_back({"density", scope::model, 1.0, "fraction of the task vector kept", 0.0, 1.0});
    p.push_back({"rescale", scope::method, rescale ? 1.0 : 0.0, "rescale what is kept"});
  }
  if (random) p.push_back({"seed", scope::method, 0.0, "seed of the random masks"});
  if (gamma) p.push_back({"gamma", scope::model, 0.01, "fraction of largest entries dropped", 0.0, 1.0});
  if (epsilon) p.push_back({"epsilon", scope::model, 0.15, "spread of keep probabilities", 0.0, 1.0});
  return p;
}

inline sign_consensus parse_consensus(std::string_view text) {
  if (text == "sum") return sign_consensus::sum;
  if (text == "count") return sign_consensus::count;
  fail(error_code::invalid_argument, "consensus must be 'sum' or 'count', not ", quoted{text});
}

inline method_definition task_vector_method(task_vector_merge prototype, bool density, bool random, bool gamma,
                                            bool epsilon) {
  method_definition def;
  def.name = prototype.method;
  def.parameters = task_vector_parameters(prototype.normalize, prototype.rescale, density, random, gamma, epsilon);
  if (prototype.consensus != sign_consensus::none) def.consensus_choices = {"sum", "count"};
  def.make = [prototype, density, random](const parameter_lookup& get, std::string_view consensus) {
    task_vector_merge policy = prototype;
    policy.normalize = get("normalize") != 0.0;
    policy.lambda = get("lambda");
    if (density) policy.rescale = get("rescale") != 0.0;
    if (random) {
      const double seed = get("seed");
      if (!(seed >= 0 && seed < 18446744073709551616.0) || seed != std::floor(seed)) {
        fail(error_code::invalid_argument, prototype.method, ": seed ", seed, " must be a non-negative integer");
      }
      policy.seed = static_cast<std::uint64_t>(seed);
    }
    if (!consensus.empty()) policy.consensus = parse_consensus(consensus);
    return merge_policy(policy);
  };
  return def;
}

}  // namespace detail

inline const std::vector<method_definition>& merge_methods() {
  using detail::scope;
  static const std::vector<method_definition> methods = [] {
    std::vector<method_definition> all;
    {
      method_definition linear;
      linear.name = "linear";
      linear.needs_base = false;
      linear.parameters = {{"weight", scope::model, std::nullopt, "weight of the model"},
                           {"normalize", scope::method, 1.0, "divide by the sum of weights"}};
      linear.make = [](const parameter_lookup& get, std::string_view) {
        return merge_policy(linear_merge{get("normalize") != 0.0});
      };
      all.push_back(std::move(linear));
    }
    all.push_back(detail::task_vector_method(task_vector_merge::task_arithmetic(), false, false, false, false));
    all.push_back(detail::task_vector_method(task_vector_merge::ties(), true, false, false, false));
    all.push_back(detail::task_vector_method(task_vector_merge::dare_linear(), true, true, false, false));
    all.push_back(detail::task_vector_method(task_vector_merge::dare_ties(), true, true, false, false));
    all.push_back(detail::task_vector_method(task_vector_merge::breadcrumbs(), true, false, true, false));
    all.push_back(detail::task_vector_method(task_vector_merge::breadcrumbs_ties(), true, false, true, false));
    all.push_back(detail::task_vector_method(task_vector_merge::della(), true, true, false, true));
    all.push_back(detail::task_vector_method(task_vector_merge::della_linear(), true, true, false, true));
    {
      method_definition magmax;
      magmax.name = "magmax";
      magmax.parameters = {{"lambda", scope::method, 1.0, "scale of the selected task vector"}};
      magmax.make = [](const parameter_lookup& get, std::string_view) { return merge_policy(magmax_merge{get("lambda")}); };
      all.push_back(std::move(magmax));
    }
    {
      method_definition slerp;
      slerp.name = "slerp";
      slerp.parameters = {{"t", scope::method, std::nullopt, "interpolation factor: 0 is the base, 1 the model"}};
      slerp.make = [](const parameter_lookup& get, std::string_view) { return merge_policy(slerp_merge{get("t")}); };
      all.push_back(std::move(slerp));
    }
    {
      method_definition stock;
      stock.name = "model_stock";
      stock.min_models = 2;
      stock.parameters = {{"filter_wise", scope::method, 0.0, "per-row angles; only false (0) is supported"}};
      stock.make = [](const parameter_lookup& get, std::string_view) {
        if (get("filter_wise") != 0.0) {
          detail::fail(error_code::invalid_argument, "model_stock: filter_wise: true is not supported yet");
        }
        return merge_policy(model_stock_merge{});
      };
      all.push_back(std::move(stock));
    }
    return all;
  }();
  return methods;
}

inline const method_definition& find_merge_method(std::string_view name) {
  for (const auto& method : merge_methods()) {
    if (method.name == name) return method;
  }
  std::string known;
  for (const auto& method : merge_methods()) known += (known.empty() ? "" : ", ") + std::string(method.name);
  detail::fail(error_code::invalid_argument, "unknown merge method ", detail::quoted{name}, " (known: ", known, ")");
}

}  // namespace alloy
