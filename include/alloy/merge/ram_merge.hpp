#pragma once
// RAM, Reinforced Agent Merging (arXiv 2601.13572), as mergekit computes it: with base b and task
// vectors d_i = m_i - b, an entry of d_i contributes where |d_i| > epsilon; per element, with
// c the number of models that contribute there,
//   result = b + sum of the contributing d_i / c
// (an entry one model alone changed is kept whole, a shared one averaged). RAM+ (mergekit's
// `ramplus_tl`, tensor-local) boosts the unique entries of each model i by
//   lambda_i = 1 + r clamp(S_i / max(U_i, epsilon), 0, alpha),
// where S_i and U_i count its shared and unique contributing entries in the tensor.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/half.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

// |delta| > epsilon, |delta| on the bits (a ternary may stay a branch, which stops vectorisation).
ALLOY_HD ALLOY_ALWAYS_INLINE bool contributes(float delta, float epsilon) {
  return bits_float(float_bits(delta) & 0x7fffffffu) > epsilon;
}

// The number of models whose task vector contributes at one element, as a float (exact).
template <class Values>
ALLOY_HD ALLOY_ALWAYS_INLINE float contributor_count(const Values& values, float epsilon) {
  float count = 0.0f;
  for (std::size_t i = 1; i < values.size(); ++i) count += keep_or_zero(contributes(values[i] - values[0], epsilon), 1.0f);
  return count;
}

// Per model: its shared entries (sums[2 i]) and its unique ones (sums[2 i + 1]).
struct contribution_counts {
  float epsilon = 0.0f;
  std::size_t inputs = 0;  // the base and the models: what the block form's columns hold
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t, Sums&& sums) const {
    const float count = contributor_count(values, epsilon);
    for (std::size_t i = 1; i < values.size(); ++i) {
      if (contributes(values[i] - values[0], epsilon)) sums[2 * (i - 1) + (count > 1.0f ? 0 : 1)] += 1.0;
    }
  }
  // The CPU's block form: per model, the counts in integer lanes (exact: any order, the same sums).
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t, double* sums) const {
    alignas(64) float contributors[block_elements];
    for (std::size_t j = 0; j < count; ++j) contributors[j] = contributor_count(block_values{columns, j, inputs}, epsilon);
    for (std::size_t i = 1; i < inputs; ++i) {
      const float* base = columns[0];
      const float* model = columns[i];
      std::uint32_t shared = 0;
      std::uint32_t unique = 0;
      for (std::size_t j = 0; j < count; ++j) {
        const std::uint32_t in = contributes(model[j] - base[j], epsilon) ? 1u : 0u;
        shared += in & (contributors[j] > 1.0f ? 1u : 0u);
        unique += in & (contributors[j] > 1.0f ? 0u : 1u);
      }
      sums[2 * (i - 1)] += static_cast<double>(shared);
      sums[2 * (i - 1) + 1] += static_cast<double>(unique);
    }
  }
};

// One element's merge, without branches on the data (so that the CPU's loop over a block
// vectorises): the terms of models that do not contribute are +0, which changes no sum here (it
// starts at +0 and never becomes -0).
struct ram_kernel {
  const float* unique_scale = nullptr;  // lambda_i, one per model
  float epsilon = 0.0f;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    const float base = values[0];
    const float count = contributor_count(values, epsilon);
    const bool unique = count == 1.0f;
    float merged = 0.0f;
    for (std::size_t i = 1; i < values.size(); ++i) {
      const float d = values[i] - base;
      merged += keep_or_zero(contributes(d, epsilon), select_bits(unique, d * unique_scale[i - 1], d / count));
    }
    return base + merged;
  }
};

}  // namespace detail

struct ram_merge {
  double epsilon = 1e-5;
  bool boost_unique = false;  // ramplus_tl
  double r = 0.1;
  double alpha = 0.2;

  [[nodiscard]] std::string_view name() const noexcept { return boost_unique ? "ramplus_tl" : "ram"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, true, 1);
    detail::check_finite(name(), in.name, "epsilon", epsilon);
    const std::size_t k = in.models.size();
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    const auto threshold = static_cast<float>(epsilon);
    std::vector<float> lambda(k, 1.0f);
    if (boost_unique) {
      detail::check_finite(name(), in.name, "r", r);
      detail::check_finite(name(), in.name, "alpha", alpha);
      const std::vector<double> counts =
          reduce_sums(backend, inputs, output.numel(), 2 * k, detail::contribution_counts{threshold, k + 1});
      for (std::size_t i = 0; i < k; ++i) {
        const double ratio = counts[2 * i] / std::max(counts[2 * i + 1], epsilon);
        lambda[i] = static_cast<float>(1.0 + r * std::clamp(ratio, 0.0, alpha));
      }
    }
    elementwise(backend, output, inputs,
                detail::ram_kernel{stage_arguments(backend, std::span<const float>(lambda)), threshold});
  }
};

}  // namespace alloy
