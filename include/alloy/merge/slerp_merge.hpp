#pragma once
// Spherical linear interpolation between the base (t = 0) and one model (t = 1), per tensor, as
// mergekit computes it: with u = b / |b| and v = m / |m| (a norm <= 1e-8 leaves its vector
// unnormalised) and c = <u, v>: if |c| > 0.9995 the vectors are nearly parallel and the result is
// (1 - t) b + t m; otherwise, with theta = acos(c),
//   result = sin((1 - t) theta) / sin(theta) * b + sin(t theta) / sin(theta) * m.

#include <array>
#include <cmath>
#include <string_view>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

struct two_term_kernel {
  float a = 0.0f;
  float b = 0.0f;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const { return a * values[0] + b * values[1]; }
};

// The sums a SLERP needs in one pass: |b|^2, |m|^2 and <b, m>, in f64.
struct slerp_sums {
  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t, Sums&& sums) const {
    const auto x = static_cast<double>(values[0]);
    const auto y = static_cast<double>(values[1]);
    sums[0] += x * x;
    sums[1] += y * y;
    sums[2] += x * y;
  }
};

}  // namespace detail

struct slerp_merge {
  double t = 0.5;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "slerp"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_base_and_one_model(name(), in, output);
    detail::check_finite(name(), in.name, "t", t);
    const const_tensor_view pair[] = {*in.base, in.models[0]};
    const std::vector<double> sums = reduce_sums(backend, pair, output.numel(), 3, detail::slerp_sums{});
    constexpr double eps = 1e-8;
    const double norm_base = std::sqrt(sums[0]);
    const double norm_model = std::sqrt(sums[1]);
    const double cosine = sums[2] / (norm_base > eps ? norm_base : 1.0) / (norm_model > eps ? norm_model : 1.0);
    double a = 1.0 - t;
    double b = t;
    if (std::fabs(cosine) <= 0.9995) {
      const double theta = std::acos(cosine);
      const double sin_theta = std::sin(theta);
      a = std::sin(theta - theta * t) / sin_theta;
      b = std::sin(theta * t) / sin_theta;
    }
    elementwise(backend, output, pair, detail::two_term_kernel{static_cast<float>(a), static_cast<float>(b)});
  }
};

}  // namespace alloy
