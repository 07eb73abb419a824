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

namespace detail {

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

  // The CPU's block form: the same choice without branches, eight models at a time (read in
  // lockstep), the running choice kept between groups. (|d| by clearing the sign bit compares as
  // d < 0 ? -d : d does, -0 and NaN included.)
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t,
                      float* results) const {
    alignas(64) float largest[detail::block_elements];
    for (std::size_t j = 0; j < count; ++j) {
      results[j] = 0.0f;
      largest[j] = -1.0f;
    }
    std::size_t i = 1;
    for (; i + 8 <= inputs; i += 8) choose<8>(columns[0], columns + i, count, largest, results);
    detail::with_fixed_count<7>(inputs - i, [&](auto group) {
      choose<decltype(group)::value>(columns[0], columns + i, count, largest, results);
    });
    const float* base = columns[0];
    const float scale = lambda;
    for (std::size_t j = 0; j < count; ++j) results[j] = base[j] + scale * results[j];
  }

 private:
  template <std::size_t Group>
  static void choose(const float* base, const float* const* models, std::size_t count, float* ALLOY_RESTRICT largest,
                     float* ALLOY_RESTRICT chosen) {
    for (std::size_t j = 0; j < count; ++j) {
      float best = largest[j];
      float choice = chosen[j];
      for (std::size_t g = 0; g < Group; ++g) {
        const float d = models[g][j] - base[j];
        const float magnitude = detail::bits_float(detail::float_bits(d) & 0x7fffffffu);
        const bool larger = magnitude > best;
        best = detail::select_bits(larger, magnitude, best);
        choice = detail::select_bits(larger, d, choice);
      }
      largest[j] = best;
      chosen[j] = choice;
    }
  }
};

}  // namespace detail

struct magmax_merge {
  double lambda = 1.0;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "magmax"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, true, 1);
    detail::check_finite(name(), in.name, "lambda", lambda);
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    elementwise(backend, output, inputs, detail::magmax_kernel{static_cast<float>(lambda)});
  }
};

}  // namespace alloy
