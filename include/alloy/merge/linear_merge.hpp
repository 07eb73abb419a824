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

namespace detail {

struct weighted_sum_kernel {
  const float* weights = nullptr;  // one per input
  float scale = 1.0f;

  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    float total = 0.0f;
    for (std::size_t i = 0; i < values.size(); ++i) total += weights[i] * values[i];
    return total * scale;
  }

  // The CPU's block form: the same sums, eight inputs at a time (read in lockstep, as hardware
  // prefetchers follow best), the running total kept in `results` between groups.
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t,
                      float* results) const {
    for (std::size_t j = 0; j < count; ++j) results[j] = 0.0f;
    std::size_t i = 0;
    for (; i + 8 <= inputs; i += 8) accumulate<8>(columns + i, weights + i, count, results);
    detail::with_fixed_count<7>(inputs - i, [&](auto group) {
      accumulate<decltype(group)::value>(columns + i, weights + i, count, results);
    });
    const float factor = scale;
    for (std::size_t j = 0; j < count; ++j) results[j] *= factor;
  }

 private:
  template <std::size_t Group>
  static void accumulate(const float* const* columns, const float* group_weights, std::size_t count,
                         float* ALLOY_RESTRICT results) {
    float w[Group];
    for (std::size_t g = 0; g < Group; ++g) w[g] = group_weights[g];
    for (std::size_t j = 0; j < count; ++j) {
      float total = results[j];
      for (std::size_t g = 0; g < Group; ++g) total += w[g] * columns[g][j];
      results[j] = total;
    }
  }
};

}  // namespace detail

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
    const detail::weighted_sum_kernel kernel{stage_arguments(backend, std::span<const float>(weights)),
                                     static_cast<float>(1.0 / divisor)};
    elementwise(backend, output, in.models, kernel);
  }
};

}  // namespace alloy
