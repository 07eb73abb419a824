#pragma once
// What every merge policy receives for one tensor, and the checks they all share.

#include <cmath>
#include <cstddef>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"

namespace alloy {

// Per-model parameters, already resolved for the tensor being merged. Each policy reads the ones
// it defines (mergekit's names) and ignores the rest.
struct model_parameters {
  double weight = 1.0;
  double density = 1.0;
  double gamma = 0.01;    // breadcrumbs: fraction of largest-magnitude entries dropped
  double epsilon = 0.15;  // DELLA: spread of keep probabilities around `density`
};

struct merge_inputs {
  std::string_view name;                      // the tensor's name: in errors, and keying random masks
  std::optional<const_tensor_view> base;      // the base model's tensor, for task-vector methods
  std::span<const const_tensor_view> models;  // the models' tensors (not including the base)
  std::span<const model_parameters> parameters;  // one per model
};

namespace detail {

[[noreturn]] inline void fail_parameter(std::string_view method, std::string_view tensor,
                                        std::string_view parameter, double value, std::string_view expected) {
  fail(error_code::invalid_argument, method, ": parameter ", parameter, " = ", value, " for tensor ",
       quoted{tensor}, " must be ", expected);
}

inline void check_finite(std::string_view method, std::string_view tensor, std::string_view parameter, double value) {
  if (!std::isfinite(value)) fail_parameter(method, tensor, parameter, value, "finite");
}

inline void check_unit_interval(std::string_view method, std::string_view tensor, std::string_view parameter,
                                double value) {
  if (!(value >= 0.0 && value <= 1.0)) fail_parameter(method, tensor, parameter, value, "in [0, 1]");
}

// Shapes equal to the output's, dtypes computable, one parameter set per model, base present when
// needed. Alloy refuses a tensor whose shape differs rather than skipping it (mergekit warns and
// drops that model from the tensor).
inline void check_merge_inputs(std::string_view method, const merge_inputs& in, tensor_view output,
                               bool needs_base, std::size_t min_models) {
  if (in.models.size() != in.parameters.size()) {
    fail(error_code::invalid_argument, method, ": ", in.models.size(), " models but ", in.parameters.size(),
         " parameter sets for tensor ", quoted{in.name});
  }
  if (in.models.size() < min_models) {
    fail(error_code::invalid_argument, method, " needs at least ", min_models, " models, got ",
         in.models.size(), " for tensor ", quoted{in.name});
  }
  if (needs_base && !in.base) fail(error_code::invalid_argument, method, " needs a base model (tensor ", quoted{in.name}, ")");
  const auto check = [&](const_tensor_view view, std::string_view role) {
    if (!is_mergeable(view.dtype())) {
      fail(error_code::dtype_mismatch, method, ": ", role, " of tensor ", quoted{in.name}, " has dtype ",
           view.dtype(), "; merging needs F32, F16 or BF16");
    }
    if (!(view.shape() == output.shape())) {
      fail(error_code::shape_mismatch, method, ": ", role, " of tensor ", quoted{in.name}, " has shape ",
           view.shape(), " but the output has shape ", output.shape());
    }
  };
  check(output, "the output");
  if (in.base) check(*in.base, "the base");
  for (std::size_t i = 0; i < in.models.size(); ++i) {
    check(in.models[i], "model " + std::to_string(i));
    check_finite(method, in.name, "weight", in.parameters[i].weight);
  }
}

// A tensor's inputs as one list, as the primitives take them: the base first where there is one
// (the origin of the task vectors), then the models.
inline std::vector<const_tensor_view> base_and_models(const merge_inputs& in) {
  std::vector<const_tensor_view> inputs;
  inputs.reserve(in.models.size() + 1);
  if (in.base) inputs.push_back(*in.base);
  inputs.insert(inputs.end(), in.models.begin(), in.models.end());
  return inputs;
}

// For the methods that blend the base with exactly one model (slerp, nearswap, arcee_fusion):
// the inputs' checks and the one model.
inline void check_base_and_one_model(std::string_view method, const merge_inputs& in, tensor_view output) {
  check_merge_inputs(method, in, output, true, 1);
  if (in.models.size() != 1) {
    fail(error_code::invalid_argument, method, " merges the base with exactly one model, got ", in.models.size(),
         " models for tensor ", quoted{in.name});
  }
}

}  // namespace detail
}  // namespace alloy
