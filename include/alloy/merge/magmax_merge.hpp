#pragma once
// MagMax (Marczak et al., 2024, as in fusion_bench): per entry, the task vector of largest
// magnitude across models (the first model on ties), scaled by lambda and added to the base.

#include <cstddef>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

struct magmax_kernel {
  float lambda = 1.0f;

  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    float chosen = 0.0f;
    float largest = -1.0f;
    for (std::size_t i = 1; i < values.size(); ++i) {
      const float d = values[i] - values[0];
      const float magnitude = d < 0 ? -d : d;
      if (magnitude > largest) {
        largest = magnitude;
        chosen = d;
      }
    }
    return values[0] + lambda * chosen;
  }
};

struct magmax_merge {
  double lambda = 1.0;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "magmax"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, true, 1);
    detail::check_finite(name(), in.name, "lambda", lambda);
    std::vector<const_tensor_view> inputs{*in.base};
    for (const auto& model : in.models) inputs.push_back(model);
    elementwise(backend, output, inputs, magmax_kernel{static_cast<float>(lambda)});
  }
};

}  // namespace alloy
