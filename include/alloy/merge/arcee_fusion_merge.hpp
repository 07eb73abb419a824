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
};

// exp(x - the row's mean) of m (shift[0]) and b (shift[1]).
struct shifted_exponentials {
  const double* shifts = nullptr;  // two per row
  tensor_rows rows{};
  template <class Values>
  ALLOY_HD void operator()(const Values& values, std::size_t index, double& model, double& base) const {
    const double* shift = shifts + 4 * rows.row_of(index);
    model = std::exp(static_cast<double>(values[1]) - shift[0]);
    base = std::exp(static_cast<double>(values[0]) - shift[1]);
  }
};

// Per row: sum exp(m - mean m) (sums[0]) and sum exp(b - mean b) (sums[1]).
struct softmax_denominators {
  shifted_exponentials exponentials;
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    double model = 0.0, base = 0.0;
    exponentials(values, index, model, base);
    sums[0] += model;
    sums[1] += base;
  }
};

// Per row: sum p log(p / q), from each row's means and 1 / denominators.
struct softmax_divergence {
  shifted_exponentials exponentials;  // shifts[4 r + 2], [4 r + 3]: the inverse denominators
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t index, Sums&& sums) const {
    const double* row = exponentials.shifts + 4 * exponentials.rows.row_of(index);
    double model = 0.0, base = 0.0;
    exponentials(values, index, model, base);
    const double p = model * row[2] + 1e-8;
    const double q = base * row[3] + 1e-8;
    sums[0] += p * std::log(p / q);
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
};

struct fusion_kernel {
  fusion_importance importance;
  float threshold = 0.0f;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    const float keep = importance(values, index) >= threshold ? 1.0f : 0.0f;
    return values[0] + (values[1] - values[0]) * keep;
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
        reduce_rows(backend, pair, rows, 2, detail::softmax_denominators{{staged_means, rows}});
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
    const std::vector<double> kl = reduce_rows(backend, pair, rows, 1, detail::softmax_divergence{{staged_terms, rows}});
    std::vector<float> divergence(kl.size());
    for (std::size_t r = 0; r < kl.size(); ++r) divergence[r] = static_cast<float>(kl[r] < 0.0 ? 0.0 : kl[r]);  // NaN stays
    const detail::fusion_importance importance{stage_arguments(backend, std::span<const float>(divergence)), rows};
    float threshold = 0.0f;
    if (n != 0) {
      const auto quartile = [&](double q) {
        const auto ascending = static_cast<std::size_t>(q * static_cast<double>(n - 1));
        return nth_largest(backend, pair, n, importance, n - 1 - ascending);
      };
      const float q1 = quartile(0.25);
      const float median = quartile(0.5);
      const float q3 = quartile(0.75);
      threshold = median + 1.5f * (q3 - q1);
    }
    elementwise(backend, output, pair, detail::fusion_kernel{importance, threshold});
  }
};

}  // namespace alloy
