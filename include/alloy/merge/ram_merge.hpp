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
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

ALLOY_HD ALLOY_ALWAYS_INLINE bool contributes(float delta, float epsilon) {
  return (delta < 0.0f ? -delta : delta) > epsilon;
}

template <class Values>
ALLOY_HD ALLOY_ALWAYS_INLINE std::size_t contributor_count(const Values& values, float epsilon) {
  std::size_t count = 0;
  for (std::size_t i = 1; i < values.size(); ++i) count += contributes(values[i] - values[0], epsilon) ? std::size_t{1} : std::size_t{0};
  return count;
}

// Per model: its shared entries (sums[2 i]) and its unique ones (sums[2 i + 1]).
struct contribution_counts {
  float epsilon = 0.0f;
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t, Sums&& sums) const {
    const std::size_t count = contributor_count(values, epsilon);
    for (std::size_t i = 1; i < values.size(); ++i) {
      if (contributes(values[i] - values[0], epsilon)) sums[2 * (i - 1) + (count > 1 ? 0 : 1)] += 1.0;
    }
  }
};

struct ram_kernel {
  const float* unique_scale = nullptr;  // lambda_i, one per model
  float epsilon = 0.0f;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    const float base = values[0];
    const std::size_t count = contributor_count(values, epsilon);
    float merged = 0.0f;
    for (std::size_t i = 1; i < values.size(); ++i) {
      const float d = values[i] - base;
      if (!contributes(d, epsilon)) continue;
      merged += count == 1 ? d * unique_scale[i - 1] : d / static_cast<float>(count);
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
          reduce_sums(backend, inputs, output.numel(), 2 * k, detail::contribution_counts{threshold});
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
