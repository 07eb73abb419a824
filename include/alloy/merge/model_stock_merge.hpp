#pragma once
// Model Stock (Jang et al., 2024), as mergekit computes it per tensor: with offsets o_i = m_i - b
// of N >= 2 models, c = the mean over pairs i < j of <o_i, o_j> / max(|o_i| |o_j|, 1e-6) clamped
// to [-1, 1], and t = N c / (1 + (N - 1) c) (0 where |1 + (N - 1) c| < 1e-6):
//   result = t * mean_i(m_i) + (1 - t) * b.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

struct interpolate_mean_kernel {
  float t = 0.0f;
  float inverse_models = 1.0f;  // 1 / number of models
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    float mean = 0.0f;
    for (std::size_t i = 1; i < values.size(); ++i) mean += values[i];
    mean *= inverse_models;
    return t * mean + (1.0f - t) * values[0];
  }
};

// The upper triangle of the Gram matrix of the offsets m_i - b, row by row, in f64.
struct offset_gram_sums {
  std::size_t models = 0;
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t, Sums&& sums) const {
    std::size_t at = 0;
    for (std::size_t i = 0; i < models; ++i) {
      const double oi = static_cast<double>(values[1 + i]) - static_cast<double>(values[0]);
      for (std::size_t j = i; j < models; ++j) {
        sums[at++] += oi * (static_cast<double>(values[1 + j]) - static_cast<double>(values[0]));
      }
    }
  }
};

}  // namespace detail

struct model_stock_merge {
  [[nodiscard]] static constexpr std::string_view name() noexcept { return "model_stock"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, true, 2);
    const std::size_t k = in.models.size();
    std::vector<const_tensor_view> inputs{*in.base};
    for (const auto& model : in.models) inputs.push_back(model);
    // Gram matrix of the offsets, upper triangle: k (k + 1) / 2 sums in one pass.
    const std::size_t terms = k * (k + 1) / 2;
    const std::vector<double> gram = reduce_sums(backend, inputs, output.numel(), terms, detail::offset_gram_sums{k});
    const auto entry = [&](std::size_t i, std::size_t j) { return gram[i * k - i * (i - 1) / 2 + (j - i)]; };
    double cosine_sum = 0.0;
    std::size_t pairs = 0;
    for (std::size_t i = 0; i < k; ++i) {
      for (std::size_t j = i + 1; j < k; ++j) {
        const double norms = std::sqrt(entry(i, i)) * std::sqrt(entry(j, j));
        cosine_sum += std::clamp(entry(i, j) / std::max(norms, 1e-6), -1.0, 1.0);
        ++pairs;
      }
    }
    const double cosine = cosine_sum / static_cast<double>(pairs);
    const double n = static_cast<double>(k);
    // As mergekit since 2026: a vanishing denominator (two models at cos -1) keeps the base.
    const double denominator = 1.0 + (n - 1.0) * cosine;
    const double t = std::fabs(denominator) < 1e-6 ? 0.0 : n * cosine / denominator;
    elementwise(backend, output, inputs, detail::interpolate_mean_kernel{static_cast<float>(t), static_cast<float>(1.0 / n)});
  }
};

}  // namespace alloy
