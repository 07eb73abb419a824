#pragma once
// SCE (Wan et al., 2024, FuseChat), as mergekit computes it. With base b and task vectors
// d_i = m_i - b of N models, per tensor:
//   1. select: where 0 < select_topk < 1, keep only the entries of the largest variance across
//      the models (population variance; the top floor(select_topk * #nonzero variances), equal
//      variances by position), the others are zero in every d_i; select_topk <= 0 keeps none
//   2. calculate: w_i = mean(d_i^2) / sum_j mean(d_j^2) (1 / N where that sum is below 1e-6)
//   3. erase: per entry the sign of sum_i d_i (0 counts as +); d_i of the other sign, or zero,
//      is dropped
//   4. result = b + sum_i w_i d_i / max(sum_i w_i, 1e-6), the sums over the kept entries.
// The models' weights are not used. Computed in f32, rounded once into the output's dtype.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

// The population variance of the task vectors at one element (values[0] the base), by Welford's
// update, so that equal task vectors give exactly 0 (as torch.var).
struct task_vector_variance {
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    float mean = 0.0f;
    float squares = 0.0f;
    const std::size_t models = values.size() - 1;
    for (std::size_t i = 0; i < models; ++i) {
      const float d = values[1 + i] - values[0];
      const float delta = d - mean;
      mean += delta / static_cast<float>(i + 1);
      squares += delta * (d - mean);
    }
    return squares / static_cast<float>(models);
  }
};

// 1 per element whose variance across the task vectors is not zero.
struct nonzero_variance_count {
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    sums[0] += task_vector_variance{}(values, index) != 0.0f ? 1.0 : 0.0;
  }
};

// Task vector i at an element, zero where a selection mask leaves it out.
ALLOY_HD ALLOY_ALWAYS_INLINE float selected_delta(float model, float base, const std::uint64_t* kept, std::size_t index) {
  return kept == nullptr || mask_bit(kept, index) ? model - base : 0.0f;
}

// sum over elements of the selected d_i^2, per model.
struct selected_squares {
  const std::uint64_t* kept = nullptr;  // none: everything
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    for (std::size_t i = 1; i < values.size(); ++i) {
      const auto d = static_cast<double>(selected_delta(values[i], values[0], kept, index));
      sums[i - 1] += d * d;
    }
  }
};

struct sce_kernel {
  const float* weights = nullptr;  // one per model
  const std::uint64_t* kept = nullptr;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    const float base = values[0];
    float election = 0.0f;
    for (std::size_t i = 1; i < values.size(); ++i) election += selected_delta(values[i], base, kept, index);
    const bool positive = election >= 0.0f;
    float mixed = 0.0f;
    float divisor = 0.0f;
    for (std::size_t i = 1; i < values.size(); ++i) {
      const float d = selected_delta(values[i], base, kept, index);
      if (positive ? d > 0.0f : d < 0.0f) {
        mixed += d * weights[i - 1];
        divisor += weights[i - 1];
      }
    }
    return base + mixed / (divisor < 1e-6f ? 1e-6f : divisor);
  }
};

}  // namespace detail

struct sce_merge {
  double select_topk = 1.0;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "sce"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, true, 1);
    detail::check_finite(name(), in.name, "select_topk", select_topk);
    const std::size_t k = in.models.size();
    const std::size_t n = output.numel();
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);

    mask_type_t<Backend> selection;
    const std::uint64_t* kept = nullptr;
    if (select_topk < 1.0) {
      std::size_t top = 0;
      if (select_topk > 0.0) {
        const double nonzero = reduce_sums(backend, inputs, n, 1, detail::nonzero_variance_count{})[0];
        // mergekit's int(count * select_topk), a float32 product
        top = static_cast<std::size_t>(static_cast<float>(nonzero) * static_cast<float>(select_topk));
      }
      selection = rank_band_mask(backend, inputs, n, detail::task_vector_variance{}, 0, top);
      kept = selection.words();
    }
    const std::vector<double> squares = reduce_sums(backend, inputs, n, k, detail::selected_squares{kept});
    std::vector<double> mean_square(k);
    double total = 0.0;
    for (std::size_t i = 0; i < k; ++i) total += (mean_square[i] = n == 0 ? 0.0 : squares[i] / static_cast<double>(n));
    std::vector<float> weights(k);
    for (std::size_t i = 0; i < k; ++i) {
      weights[i] = static_cast<float>(std::fabs(total) < 1e-6 ? 1.0 / static_cast<double>(k) : mean_square[i] / total);
    }
    elementwise(backend, output, inputs,
                detail::sce_kernel{stage_arguments(backend, std::span<const float>(weights)), kept});
  }
};

}  // namespace alloy
