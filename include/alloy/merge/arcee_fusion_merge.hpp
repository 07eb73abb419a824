#pragma once
// mergekit's arcee_fusion: the base b takes the model m's value only where the change matters.
// Per row (each vector along the last axis; a 1-D tensor is one row), with p = softmax(m) + 1e-8
// and q = softmax(b) + 1e-8, the row's divergence KL = sum p log(p / q); an element's importance
// is |m - b| KL of its row, and the threshold is median + 1.5 (Q3 - Q1) of all importances:
//   result = b + (m - b) * [importance >= threshold].
// The quartiles are the order statistics at floor(q (n - 1)) of the ascending order, exact over
// the whole tensor: mergekit estimates them from a random sample of a million elements where a
// tensor has more, so its mask varies from run to run there and alloy's does not. The softmax is
// computed in f64, shifted by each row's mean; a row with a value more than about 709 above its
// mean (whose exponential overflows f64) is refused.

#include <cmath>
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/elementary.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

// Per row: sum m (sums[0]) and sum b (sums[1]); values[0] is b, values[1] m.
struct pair_sums {
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t, Sums&& sums) const {
    sums[0] += static_cast<double>(values[1]);
    sums[1] += static_cast<double>(values[0]);
  }
  // The CPU's block form (reduce_rows): each sum in eight lanes.
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t, double* sums) const {
    sums[0] += sum_in_lanes(count, [&](std::size_t j) { return columns[1][j]; });
    sums[1] += sum_in_lanes(count, [&](std::size_t j) { return columns[0][j]; });
  }
};

// exp(x - the row's mean) of m (shift[0]) and b (shift[1]); shift points at the row's terms.
ALLOY_HD ALLOY_ALWAYS_INLINE void shifted_exponentials(float base_value, float model_value, const double* shift, double& model,
                                                       double& base) {
  model = exp_f64(static_cast<double>(model_value) - shift[0]);
  base = exp_f64(static_cast<double>(base_value) - shift[1]);
}

// Per row: sum exp(m - mean m) (sums[0]) and sum exp(b - mean b) (sums[1]).
struct softmax_denominators {
  const double* shifts = nullptr;  // four per row: the two means first
  tensor_rows rows{};
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    double model = 0.0, base = 0.0;
    shifted_exponentials(values[0], values[1], shifts + 4 * rows.row_of(index), model, base);
    sums[0] += model;
    sums[1] += base;
  }
  // The CPU's block form (reduce_rows: a block lies in one row): each sum in eight lanes.
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t first, double* sums) const {
    const double* shift = shifts + 4 * rows.row_of(first);
    double model[block_elements];
    double base[block_elements];
    for (std::size_t j = 0; j < count; ++j) shifted_exponentials(columns[0][j], columns[1][j], shift, model[j], base[j]);
    sums[0] += sum_in_lanes(count, [&](std::size_t j) { return model[j]; });
    sums[1] += sum_in_lanes(count, [&](std::size_t j) { return base[j]; });
  }
};

// One element's p log(p / q), from its row's terms (means, then inverse denominators).
ALLOY_HD ALLOY_ALWAYS_INLINE double divergence_term(float base_value, float model_value, const double* row) {
  double model = 0.0, base = 0.0;
  shifted_exponentials(base_value, model_value, row, model, base);
  const double p = model * row[2] + 1e-8;
  const double q = base * row[3] + 1e-8;
  return p * log_f64(p / q);
}

// Per row: sum p log(p / q), from each row's means and 1 / denominators.
struct softmax_divergence {
  const double* shifts = nullptr;  // four per row: the two means, the two inverse denominators
  tensor_rows rows{};
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    sums[0] += divergence_term(values[0], values[1], shifts + 4 * rows.row_of(index));
  }
  // The CPU's block form (reduce_rows: a block lies in one row): the sum in eight lanes.
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t first, double* sums) const {
    const double* row = shifts + 4 * rows.row_of(first);
    double terms[block_elements];
    for (std::size_t j = 0; j < count; ++j) terms[j] = divergence_term(columns[0][j], columns[1][j], row);
    sums[0] += sum_in_lanes(count, [&](std::size_t j) { return terms[j]; });
  }
};

// |m - b| times the divergence of the element's row, in f32.
struct fusion_importance {
  const float* divergence = nullptr;  // one per row
  tensor_rows rows{};
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    const float d = values[1] - values[0];
    return (d < 0.0f ? -d : d) * divergence[rows.row_of(index)];
  }
  // The CPU's block form (the selection's keys, the merge): each row's divergence read once.
  void evaluate_block(const float* const* columns, std::size_t, std::size_t count, std::size_t first,
                      float* ALLOY_RESTRICT results) const {
    const float* base = columns[0];
    const float* model = columns[1];
    for_each_row_run(rows, first, count, [&](std::size_t row, std::size_t begin, std::size_t end) {
      const float scale = divergence[row];
      for (std::size_t j = begin; j < end; ++j) {
        const float d = model[j] - base[j];
        results[j] = (d < 0.0f ? -d : d) * scale;
      }
    });
  }
};

struct fusion_kernel {
  fusion_importance importance;
  float threshold = 0.0f;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    return merged(values[0], values[1], importance(values, index));
  }
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t first,
                      float* ALLOY_RESTRICT results) const {
    alignas(64) float scores[block_elements];
    importance.evaluate_block(columns, inputs, count, first, scores);
    for (std::size_t j = 0; j < count; ++j) results[j] = merged(columns[0][j], columns[1][j], scores[j]);
  }

 private:
  [[nodiscard]] ALLOY_HD ALLOY_ALWAYS_INLINE float merged(float base, float model, float score) const {
    const float keep = score >= threshold ? 1.0f : 0.0f;
    return base + (model - base) * keep;
  }
};

}  // namespace detail

struct arcee_fusion_merge {
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "arcee_fusion"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_base_and_one_model(name(), in, output);
    const std::size_t n = output.numel();
    const const_tensor_view pair[] = {*in.base, in.models[0]};
    const tensor_rows rows = tensor_rows::last_axis(output.shape());
    // Each row's softmax shifted by the row's mean (softmax does not change; exp stays in f64's
    // range unless a value lies more than about 709 above its row's mean).
    const std::vector<double> sums = reduce_rows(backend, pair, rows, 2, detail::pair_sums{});
    std::vector<double> row_terms(2 * sums.size());  // per row: two means, two inverse denominators
    for (std::size_t r = 0; r < rows.count; ++r) {
      for (std::size_t side = 0; side < 2; ++side) row_terms[4 * r + side] = sums[2 * r + side] / static_cast<double>(rows.length);
    }
    const double* staged_means = stage_arguments(backend, std::span<const double>(row_terms));
    const std::vector<double> denominators =
        reduce_rows(backend, pair, rows, 2, detail::softmax_denominators{staged_means, rows});
    for (std::size_t r = 0; r < rows.count; ++r) {
      for (std::size_t side = 0; side < 2; ++side) {
        const double denominator = denominators[2 * r + side];
        if (std::isfinite(row_terms[4 * r + side]) && !std::isfinite(denominator)) {
          detail::fail(error_code::limit, name(), ": row ", r, " of the ", side == 0 ? "model's" : "base's", " tensor ",
                       detail::quoted{in.name}, " holds a value more than about 709 above the row's mean, beyond the ",
                       "range of its softmax in f64");
        }
        row_terms[4 * r + 2 + side] = 1.0 / denominator;  // NaN or infinite data: NaN, which then spreads
      }
    }
    const double* staged_terms = stage_arguments(backend, std::span<const double>(row_terms));
    const std::vector<double> kl = reduce_rows(backend, pair, rows, 1, detail::softmax_divergence{staged_terms, rows});
    std::vector<float> divergence(kl.size());
    for (std::size_t r = 0; r < kl.size(); ++r) divergence[r] = static_cast<float>(kl[r] < 0.0 ? 0.0 : kl[r]);  // NaN stays
    const detail::fusion_importance importance{stage_arguments(backend, std::span<const float>(divergence)), rows};
    float threshold = 0.0f;
    if (n != 0) {
      // The quartiles' positions in the descending order, selected together.
      std::vector<std::size_t> positions;
      for (const double q : {0.25, 0.5, 0.75}) positions.push_back(n - 1 - static_cast<std::size_t>(q * static_cast<double>(n - 1)));
      const std::vector<float> quartiles = nth_largest_each(backend, pair, n, importance, positions);
      threshold = quartiles[1] + 1.5f * (quartiles[2] - quartiles[0]);
    }
    elementwise(backend, output, pair, detail::fusion_kernel{importance, threshold});
  }
};

}  // namespace alloy
