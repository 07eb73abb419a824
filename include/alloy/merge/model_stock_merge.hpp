#pragma once
// Model Stock (Jang et al., 2024), as mergekit computes it: with offsets o_i = m_i - b of N >= 2
// models, c = the mean over pairs i < j of <o_i, o_j> / max(|o_i| |o_j|, 1e-6) clamped to
// [-1, 1], and t = N c / (1 + (N - 1) c) (0 where |1 + (N - 1) c| < 1e-6):
//   result = t * mean_i(m_i) + (1 - t) * b.
// Per tensor, or with `filter_wise` per row (each vector along the last axis, mergekit's
// filters; a 1-D tensor is one row).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/combination.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

// t * mean(models) + (1 - t) * base with t per row (values[0] the base).
struct interpolate_mean_kernel {
  const float* t = nullptr;  // one per row
  float inverse_models = 1.0f;  // 1 / number of models
  tensor_rows rows{};
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    return interpolated(values, t[rows.row_of(index)]);
  }
  // The CPU's block form: no division per element to find its row.
  void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count, std::size_t first,
                      float* ALLOY_RESTRICT results) const {
    for_each_row_element(rows, columns, inputs, first, count, [&](std::size_t row, std::size_t j, const auto& values) {
      results[j] = interpolated(values, t[row]);
    });
  }

 private:
  template <class Values>
  ALLOY_HD ALLOY_ALWAYS_INLINE float interpolated(const Values& values, float ti) const {
    float mean = 0.0f;
    for (std::size_t i = 1; i < values.size(); ++i) mean += values[i];
    mean *= inverse_models;
    return ti * mean + (1.0f - ti) * values[0];
  }
};

// Model Stock's t from one row's upper-triangle Gram matrix of the offsets.
inline double model_stock_ratio(const double* upper, std::size_t models) {
  const std::vector<double> gram = full_gram(upper, models);
  double cosine_sum = 0.0;
  std::size_t pairs = 0;
  for (std::size_t i = 0; i < models; ++i) {
    for (std::size_t j = i + 1; j < models; ++j) {
      const double norms = std::sqrt(gram[i * models + i]) * std::sqrt(gram[j * models + j]);
      cosine_sum += std::clamp(gram[i * models + j] / std::max(norms, 1e-6), -1.0, 1.0);
      ++pairs;
    }
  }
  const double cosine = cosine_sum / static_cast<double>(pairs);
  const double n = static_cast<double>(models);
  // As mergekit since 2026: a vanishing denominator (two models at cos -1) keeps the base.
  const double denominator = 1.0 + (n - 1.0) * cosine;
  return std::fabs(denominator) < 1e-6 ? 0.0 : n * cosine / denominator;
}

}  // namespace detail

struct model_stock_merge {
  bool filter_wise = false;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "model_stock"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, true, 2);
    const std::size_t k = in.models.size();
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    const tensor_rows rows = filter_wise ? tensor_rows::last_axis(output.shape()) : tensor_rows::whole(output.numel());
    const std::size_t terms = detail::gram_sums::terms(k);
    const std::vector<double> gram = reduce_rows(backend, inputs, rows, terms, detail::gram_sums{k, true});
    std::vector<float> t(rows.count);
    for (std::size_t r = 0; r < rows.count; ++r) t[r] = static_cast<float>(detail::model_stock_ratio(gram.data() + r * terms, k));
    const float* staged = stage_arguments(backend, std::span<const float>(t));
    elementwise(backend, output, inputs,
                detail::interpolate_mean_kernel{staged, static_cast<float>(1.0 / static_cast<double>(k)), rows});
  }
};

}  // namespace alloy
