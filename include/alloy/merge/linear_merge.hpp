#pragma once
// Weighted average (mergekit's `linear`): sum_i w_i m_i / sum_i w_i, or the plain weighted sum
// when normalize is off. A zero weight sum divides by 1. No base model.

#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

struct weighted_sum_kernel {
  const float* weights = nullptr;  // one per input
  float scale = 1.0f;

  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    float total = 0.0f;
    for (std::size_t i = 0; i < values.size(); ++i) total += weights[i] * values[i];
    return total * scale;
  }
};

struct linear_merge {
  bool normalize = true;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "linear"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return false; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, false, 1);
    std::vector<float> weights;
    double total = 0.0;
    for (const auto& p : in.parameters) {
      weights.push_back(static_cast<float>(p.weight));
      total += p.weight;
    }
    const double divisor = normalize && total != 0.0 ? total : 1.0;
    const weighted_sum_kernel kernel{stage_arguments(backend, std::span<const float>(weights)),
                                     static_cast<float>(1.0 / divisor)};
    elementwise(backend, output, in.models, kernel);
  }
};

}  // namespace alloy
