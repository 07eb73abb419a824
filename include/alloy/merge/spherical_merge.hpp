#pragma once
// Interpolation on the sphere, as mergekit computes it: NuSLERP (two models, per tensor or per
// row), Multi-SLERP (any number of models, barycentric) and the Karcher mean (the Riemannian
// mean, iterated). Every one of them returns a combination of its inputs whose coefficients
// depend only on their inner products, so each is one Gram pass, a few lines of f64 on the
// host, and one combining pass (combination.hpp); the iterations of the Karcher mean run on the
// coefficients, not on tensors.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/combination.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

// Coefficients c_i of sum_i c_i x_i as coefficients of the inputs: with an origin b (input 0),
// b + sum_i c_i (m_i - b) = (1 - sum_i c_i) b + sum_i c_i m_i.
inline void append_combination(const std::vector<double>& c, bool from_origin, std::vector<float>& out) {
  if (from_origin) {
    double total = 0.0;
    for (double ci : c) total += ci;
    out.push_back(static_cast<float>(1.0 - total));
  }
  for (double ci : c) out.push_back(static_cast<float>(ci));
}

}  // namespace detail

// mergekit's nuslerp: SLERP between exactly two models at t = w_1 / (w_0 + w_1) (0.5 where the
// weights sum to less than 1e-6 in magnitude), of their task vectors when there is a base. With
// v the two vectors, n = max(|v|, 1e-7), theta = acos(clamp(<v_0, v_1> / (n_0 n_1), -1, 1)):
//   sin((1 - t) theta) / sin(theta) v_0 + sin(t theta) / sin(theta) v_1,
// (1 - t) v_0 + t v_1 where |sin(theta)| < 1e-8. `flatten` (the default) takes each tensor as one
// vector; otherwise each row along the last axis, or along the first axis with `row_wise`.
struct nuslerp_merge {
  bool row_wise = false;
  bool flatten = true;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "nuslerp"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return false; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, false, 2);
    if (in.models.size() != 2) {
      detail::fail(error_code::invalid_argument, name(), " merges exactly two models (and an optional base), got ",
                   in.models.size(), " for tensor ", detail::quoted{in.name});
    }
    const double w0 = in.parameters[0].weight;
    const double w1 = in.parameters[1].weight;
    const double t = std::fabs(w0 + w1) < 1e-6 ? 0.5 : w1 / (w0 + w1);
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    const bool from_origin = in.base.has_value();
    const tensor_rows rows = flatten    ? tensor_rows::whole(output.numel())
                             : row_wise ? tensor_rows::first_axis(output.shape())
                                        : tensor_rows::last_axis(output.shape());
    const std::vector<double> gram = reduce_rows(backend, inputs, rows, 3, detail::gram_sums{2, from_origin});
    std::vector<float> coefficients;
    coefficients.reserve(rows.count * inputs.size());
    for (std::size_t r = 0; r < rows.count; ++r) {
      const double* g = gram.data() + r * 3;  // |v0|^2, <v0, v1>, |v1|^2
      const double n0 = std::max(std::sqrt(g[0]), 1e-7);
      const double n1 = std::max(std::sqrt(g[2]), 1e-7);
      const double theta = std::acos(std::clamp(g[1] / (n0 * n1), -1.0, 1.0));
      const double sin_theta = std::sin(theta);
      std::vector<double> c{1.0 - t, t};
      if (!(std::fabs(sin_theta) < 1e-8)) c = {std::sin((1.0 - t) * theta) / sin_theta, std::sin(t * theta) / sin_theta};
      detail::append_combination(c, from_origin, coefficients);
    }
    detail::combine_rows(backend, output, inputs, rows, coefficients);
  }
};

// mergekit's multislerp: barycentric interpolation on the sphere of the models (of their task
// vectors when there is a base), with weights w (divided by their sum when `normalize_weights`).
// With x_i the vectors, u_i = x_i / (|x_i| + eps), the mean direction m = sum_i w_i u_i / |.|,
// the tangent t = sum_i w_i (u_i - <u_i, m> m) and s = |t| + eps:
//   (cos(s) m + sin(s) / s t) * sum_i w_i |x_i|.
// One model is returned as it is; where |sum_i w_i u_i| < eps, two models are averaged linearly
// and more are refused (their directions cancel).
struct multislerp_merge {
  bool normalize_weights = true;
  double eps = 1e-8;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "multislerp"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return false; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, false, 1);
    detail::check_finite(name(), in.name, "eps", eps);
    const std::size_t k = in.models.size();
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    const bool from_origin = in.base.has_value();
    const tensor_rows rows = tensor_rows::whole(output.numel());
    if (k == 1) {
      std::vector<float> coefficients(inputs.size(), 0.0f);
      coefficients.back() = 1.0f;  // the model's tensor, whatever the base
      detail::combine_rows(backend, output, inputs, rows, coefficients);
      return;
    }
    std::vector<double> w(k);
    double weight_sum = 0.0;
    for (std::size_t i = 0; i < k; ++i) weight_sum += (w[i] = in.parameters[i].weight);
    if (normalize_weights) {
      if (weight_sum == 0.0) {
        detail::fail(error_code::invalid_argument, name(), ": the weights of tensor ", detail::quoted{in.name},
                     " sum to 0 and cannot be normalized");
      }
      for (double& wi : w) wi /= weight_sum;
    }
    const std::vector<double> upper = reduce_rows(backend, inputs, rows, detail::gram_sums::terms(k), detail::gram_sums{k, from_origin});
    const std::vector<double> gram = detail::full_gram(upper.data(), k);
    std::vector<double> norm(k), a(k);  // |x_i|; the mean's coefficients w_i / (|x_i| + eps)
    double scale = 0.0;                 // sum_i w_i |x_i|
    for (std::size_t i = 0; i < k; ++i) {
      norm[i] = std::sqrt(gram[i * k + i]);
      a[i] = w[i] / (norm[i] + eps);
      scale += norm[i] * w[i];
    }
    const double mean_norm = std::sqrt(std::fabs(detail::gram_product(gram, a, a)));
    std::vector<double> c(k, 0.0);
    if (!std::isfinite(scale) || !std::isfinite(mean_norm)) {
      // A NaN or an infinity in a model: it spreads over the tensor, as every statistic of the
      // whole tensor makes it (the directions are not defined).
      std::fill(c.begin(), c.end(), std::numeric_limits<double>::quiet_NaN());
    } else if (mean_norm < eps) {
      if (k != 2) {
        detail::fail(error_code::invalid_argument, name(), ": the weighted directions of tensor ", detail::quoted{in.name},
                     " cancel out (antipodal models with balancing weights); give the models other weights");
      }
      c = w;  // as mergekit: two opposite models fall back to the linear interpolation
    } else {
      // m = sum_j (a_j / mean_norm) x_j; <u_i, m> = (G a)_i / ((|x_i| + eps) mean_norm).
      std::vector<double> mean(k), tangent(k);
      double projected = 0.0;  // sum_i w_i <u_i, m>
      for (std::size_t i = 0; i < k; ++i) {
        mean[i] = a[i] / mean_norm;
        double ga = 0.0;
        for (std::size_t j = 0; j < k; ++j) ga += gram[i * k + j] * a[j];
        projected += w[i] * ga / ((norm[i] + eps) * mean_norm);
      }
      for (std::size_t i = 0; i < k; ++i) tangent[i] = a[i] - projected * mean[i];
      const double s = std::sqrt(std::max(0.0, detail::gram_product(gram, tangent, tangent))) + eps;
      for (std::size_t i = 0; i < k; ++i) c[i] = (mean[i] * std::cos(s) + tangent[i] * (std::sin(s) / s)) * scale;
    }
    std::vector<float> coefficients;
    detail::append_combination(c, from_origin, coefficients);
    detail::combine_rows(backend, output, inputs, rows, coefficients);
  }
};

// mergekit's karcher: the Karcher (Riemannian) mean on the unit sphere of every input tensor
// (the base, where there is one, is one more input), with equal weights, scaled by the mean of
// the inputs' norms. Directions u_i = x_i / |x_i| of the inputs with |x_i| > tol; from their
// normalised mean, up to `max_iter` steps of
//   T = sum_i a_i theta_i / sin(theta_i) (u_i - cos(theta_i) u),  theta_i = acos(<u, u_i>)
//   u <- cos(|T|) u + sin(|T|) T / |T|   (then renormalised),
// skipping inputs within tol of u and stopping once |T| < tol.
struct karcher_merge {
  std::uint64_t max_iter = 10;
  double tol = 1e-5;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "karcher"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return false; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_merge_inputs(name(), in, output, false, 1);
    detail::check_finite(name(), in.name, "tol", tol);
    const std::vector<const_tensor_view> inputs = detail::base_and_models(in);
    const std::size_t k = inputs.size();
    const tensor_rows rows = tensor_rows::whole(output.numel());
    std::vector<double> c(k, 0.0);  // the result's coefficients of the inputs
    if (k == 1) {
      c[0] = 1.0;
    } else {
      const std::vector<double> upper =
          reduce_rows(backend, inputs, rows, detail::gram_sums::terms(k), detail::gram_sums{k, false});
      c = coefficients(detail::full_gram(upper.data(), k));
    }
    std::vector<float> staged(c.begin(), c.end());
    detail::combine_rows(backend, output, inputs, rows, staged);
  }

 private:
  // The iteration on the coefficients of u in the basis of the inputs: with G their Gram
  // matrix, <u, u_i> = (G c)_i / |x_i| and |T|^2 = T^T G T.
  [[nodiscard]] std::vector<double> coefficients(const std::vector<double>& gram) const {
    const std::size_t k = static_cast<std::size_t>(std::sqrt(static_cast<double>(gram.size())));
    std::vector<double> norm(k);
    std::vector<std::size_t> valid;
    for (std::size_t i = 0; i < k; ++i) {
      norm[i] = std::sqrt(gram[i * k + i]);
      if (norm[i] > tol) valid.push_back(i);
    }
    std::vector<double> u(k, 0.0);
    if (valid.empty()) return u;  // every input (nearly) zero: zeros
    const double alpha = 1.0 / static_cast<double>(valid.size());  // equal weights, renormalised over the valid
    for (std::size_t i : valid) u[i] = alpha / norm[i];
    const auto length = [&](const std::vector<double>& v) { return std::sqrt(std::max(0.0, detail::gram_product(gram, v, v))); };
    const double mean_norm = length(u);
    if (mean_norm < tol) {
      std::fill(u.begin(), u.end(), 0.0);
      u[valid.front()] = 1.0 / norm[valid.front()];
    } else {
      for (double& ui : u) ui /= mean_norm;
    }
    for (std::uint64_t iteration = 0; iteration < max_iter; ++iteration) {
      std::vector<double> tangent(k, 0.0);
      for (std::size_t i : valid) {
        double gu = 0.0;
        for (std::size_t j = 0; j < k; ++j) gu += gram[i * k + j] * u[j];
        const double dot = std::clamp(gu / norm[i], -1.0, 1.0);
        const double theta = std::acos(dot);
        if (theta < tol) continue;
        const double factor = alpha * theta / std::sin(theta);
        tangent[i] += factor / norm[i];
        for (std::size_t j = 0; j < k; ++j) tangent[j] -= factor * dot * u[j];
      }
      const double tangent_norm = length(tangent);
      if (tangent_norm < tol) break;
      for (std::size_t j = 0; j < k; ++j) u[j] = std::cos(tangent_norm) * u[j] + std::sin(tangent_norm) * tangent[j] / tangent_norm;
      const double unit = length(u);
      if (unit > tol) {
        for (double& uj : u) uj /= unit;
      }
    }
    double scale = 0.0;  // sum over every input of |x_i| / k
    for (std::size_t i = 0; i < k; ++i) scale += norm[i] / static_cast<double>(k);
    for (double& uj : u) uj *= scale;
    return u;
  }
};

}  // namespace alloy
