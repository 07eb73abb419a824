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
#include <type_traits>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/half.hpp"
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
  // The CPU's block form (the selection's ranked values): the same per element, with the model
  // count fixed at compile time up to 8, so that the loop over models unrolls and the elements
  // vectorise (over a run-time count, the division per model kept the loop scalar).
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t,
                      float* ALLOY_RESTRICT results) const {
    const auto run_time_count = [&] {
      for (std::size_t j = 0; j < count; ++j) results[j] = (*this)(block_values{columns, j, inputs}, 0);
    };
    const auto fixed = [&]<std::size_t Inputs>(std::integral_constant<std::size_t, Inputs>) {
      if constexpr (Inputs >= 2) {  // a base and at least one model (SCE checks it)
        for (std::size_t j = 0; j < count; ++j) results[j] = (*this)(fixed_block_values<Inputs>{columns, j}, 0);
      } else {
        run_time_count();
      }
    };
    if (!with_fixed_count<9>(inputs, fixed)) run_time_count();
  }
};

// 1 per element whose variance across the task vectors is not zero.
struct nonzero_variance_count {
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    sums[0] += task_vector_variance{}(values, index) != 0.0f ? 1.0 : 0.0;
  }
  // The CPU's block form: the variances by their block form, the count in integer lanes (exact,
  // so in any order the same sum).
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t first, double* sums) const {
    alignas(64) float variances[block_elements];
    task_vector_variance{}.evaluate_block(columns, inputs, count, first, variances);
    std::uint32_t nonzero = 0;
    for (std::size_t j = 0; j < count; ++j) nonzero += variances[j] != 0.0f ? 1u : 0u;
    sums[0] += static_cast<double>(nonzero);
  }
  std::size_t inputs = 0;  // the base and the models: what the block form's columns hold
};

// Whether the selection keeps element `index` (no mask: every element).
ALLOY_HD ALLOY_ALWAYS_INLINE bool selected(const std::uint64_t* kept, std::size_t index) {
  return kept == nullptr || mask_bit(kept, index);
}

// 0/1 for elements [first, first + count) of a selection (no mask: every element).
inline void expand_selection(const std::uint64_t* kept, std::size_t first, std::size_t count, std::uint32_t* out) {
  if (kept == nullptr) {
    for (std::size_t j = 0; j < count; ++j) out[j] = 1;
  } else {
    unpack_bits(kept, first, count, out);
  }
}

// sum over elements of the selected d_i^2, per model.
struct selected_squares {
  const std::uint64_t* kept = nullptr;  // none: everything
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    const bool in = selected(kept, index);
    for (std::size_t i = 1; i < values.size(); ++i) {
      const auto d = static_cast<double>(keep_or_zero(in, values[i] - values[0]));
      sums[i - 1] += d * d;
    }
  }
  // The CPU's block form: the selection expanded first, each model's squares summed in lanes.
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t first, double* sums) const {
    alignas(64) std::uint32_t in[block_elements];
    expand_selection(kept, first, count, in);
    for (std::size_t i = 0; i < models; ++i) {
      const float* base = columns[0];
      const float* model = columns[1 + i];
      sums[i] += sum_in_lanes(count, [&](std::size_t j) {
        const auto d = static_cast<double>(keep_or_zero(in[j] != 0, model[j] - base[j]));
        return d * d;
      });
    }
  }
  std::size_t models = 0;
};

// Steps 3 and 4 at one element, without branches on the data: the same code per element (a GPU
// thread) and over a block of the CPU backend, where it vectorises. A skipped term and an added
// +0 are the same here: the sums start at +0 and never become -0.
template <class Values>
ALLOY_HD ALLOY_ALWAYS_INLINE float sce_element(const Values& values, bool in, const float* weights) {
  const float base = values[0];
  float election = 0.0f;
  for (std::size_t i = 1; i < values.size(); ++i) election += keep_or_zero(in, values[i] - base);
  const bool positive = election >= 0.0f;
  float mixed = 0.0f;
  float divisor = 0.0f;
  for (std::size_t i = 1; i < values.size(); ++i) {
    const float d = keep_or_zero(in, values[i] - base);
    const bool agree = (positive & (d > 0.0f)) | (!positive & (d < 0.0f));
    mixed += keep_or_zero(agree, d * weights[i - 1]);
    divisor += keep_or_zero(agree, weights[i - 1]);
  }
  return base + mixed / select_bits(divisor < 1e-6f, 1e-6f, divisor);
}

struct sce_kernel {
  const float* weights = nullptr;  // one per model
  const std::uint64_t* kept = nullptr;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    return sce_element(values, selected(kept, index), weights);
  }
  // The CPU's block form (elementwise.hpp): the selection expanded first; up to 8 models the count
  // is fixed at compile time, so that the loops over models unroll and the elements vectorise.
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t first,
                      float* ALLOY_RESTRICT results) const {
    alignas(64) std::uint32_t in[block_elements];
    expand_selection(kept, first, count, in);
    const float* w = weights;
    const auto fixed = [&]<std::size_t Inputs>(std::integral_constant<std::size_t, Inputs>) {
      for (std::size_t j = 0; j < count; ++j) results[j] = sce_element(fixed_block_values<Inputs>{columns, j}, in[j] != 0, w);
    };
    if (with_fixed_count<9>(inputs, fixed)) return;
    for (std::size_t j = 0; j < count; ++j) results[j] = sce_element(block_values{columns, j, inputs}, in[j] != 0, w);
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
        const double nonzero = reduce_sums(backend, inputs, n, 1, detail::nonzero_variance_count{k + 1})[0];
        // mergekit's int(count * select_topk), a float32 product
        top = static_cast<std::size_t>(static_cast<float>(nonzero) * static_cast<float>(select_topk));
      }
      selection = rank_band_mask(backend, inputs, n, detail::task_vector_variance{}, 0, top);
      kept = selection.words();
    }
    const std::vector<double> squares = reduce_sums(backend, inputs, n, k, detail::selected_squares{kept, k});
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
