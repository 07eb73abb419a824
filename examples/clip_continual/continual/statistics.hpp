#pragma once
// The study's statistics over task orders: means, sample standard deviations, and 95% confidence
// intervals from Student's t, for one method's figures and for the paired difference of two
// methods run on the same orders.
//
// Why t and not a bootstrap: the study has few orders (3 in the quick default, 10 in --full), too
// few for a bootstrap's percentiles to mean much, and per-order ACC is a mean over thousands of
// test images, close enough to normal for t's interval. Pairing matters more than the interval's
// form: two methods' ACC vary together with the order (some orders are hard for every method), so
// the difference per order has a much smaller spread than either method's ACC.

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "alloy/core/error.hpp"

namespace alloy_clip {

inline double mean_of(const std::vector<double>& v) {
  double s = 0;
  for (const double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

// The sample standard deviation (n - 1), 0 for fewer than two values.
inline double std_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean_of(v);
  double s = 0;
  for (const double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

namespace detail {

// The continued fraction of the regularized incomplete beta function I_x(a, b), evaluated by the
// modified Lentz method; converges quickly for x < (a + 1) / (a + b + 2).
inline double incomplete_beta_fraction(double a, double b, double x) {
  constexpr double tiny = 1e-300;
  constexpr double epsilon = 1e-15;
  double c = 1.0;
  double d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::abs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double h = d;
  // One Lentz update with the fraction's next coefficient; returns the factor it applies to h.
  const auto update = [&](double coefficient) {
    d = 1.0 + coefficient * d;
    if (std::abs(d) < tiny) d = tiny;
    c = 1.0 + coefficient / c;
    if (std::abs(c) < tiny) c = tiny;
    d = 1.0 / d;
    return d * c;
  };
  for (int m = 1; m <= 1000; ++m) {
    const double md = m;
    h *= update(md * (b - md) * x / ((a + 2 * md - 1) * (a + 2 * md)));
    const double step = update(-(a + md) * (a + b + md) * x / ((a + 2 * md) * (a + 2 * md + 1)));
    h *= step;
    if (std::abs(step - 1.0) < epsilon) break;
  }
  return h;
}

// I_x(a, b), the CDF of the Beta(a, b) distribution at x.
inline double regularized_incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double log_front = std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x);
  if (x < (a + 1) / (a + b + 2)) return std::exp(log_front) * incomplete_beta_fraction(a, b, x) / a;
  return 1.0 - std::exp(log_front) * incomplete_beta_fraction(b, a, 1.0 - x) / b;
}

}  // namespace detail

// P(T <= t) for Student's t with `dof` degrees of freedom.
inline double student_t_cdf(double t, double dof) {
  const double tail = 0.5 * detail::regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t));
  return t >= 0 ? 1.0 - tail : tail;
}

// The t with P(|T| <= t) = confidence: the factor of a two-sided interval (12.71 for one degree
// of freedom at 95%, 4.30 for two, 2.26 for nine, 1.96 in the limit).
inline double student_t_two_sided(double confidence, std::size_t dof) {
  if (!(confidence > 0 && confidence < 1)) alloy::fail(alloy::error_code::invalid_argument, "confidence ", confidence, " is not in (0, 1)");
  if (dof == 0) alloy::fail(alloy::error_code::invalid_argument, "Student's t needs at least one degree of freedom");
  const double target = 0.5 + confidence / 2;
  double low = 0, high = 1;
  while (student_t_cdf(high, static_cast<double>(dof)) < target) high *= 2;
  for (int i = 0; i < 200 && high - low > 1e-12 * high; ++i) {  // the CDF is increasing: bisection
    const double mid = (low + high) / 2;
    (student_t_cdf(mid, static_cast<double>(dof)) < target ? low : high) = mid;
  }
  return (low + high) / 2;
}

// A mean over orders with its confidence interval. With one order there is no interval: `low`
// and `high` are NaN (written as null in results.json, "n/a" in the report).
struct interval {
  double mean = 0, std = 0, low = 0, high = 0;
  std::size_t n = 0;

  [[nodiscard]] bool defined() const { return n >= 2; }
  [[nodiscard]] double half_width() const { return (high - low) / 2; }
  // The interval lies wholly on one side of zero: the difference it describes is resolved.
  [[nodiscard]] bool excludes_zero() const { return defined() && (low > 0 || high < 0); }
};

inline interval mean_interval(const std::vector<double>& values, double confidence = 0.95) {
  interval r;
  r.n = values.size();
  r.mean = mean_of(values);
  r.std = std_of(values);
  if (r.n < 2) {
    r.low = r.high = std::numeric_limits<double>::quiet_NaN();
    return r;
  }
  const double half = student_t_two_sided(confidence, r.n - 1) * r.std / std::sqrt(static_cast<double>(r.n));
  r.low = r.mean - half;
  r.high = r.mean + half;
  return r;
}

// The interval of a - b over pairs run on the same orders (a[k] and b[k] from order k).
inline interval paired_interval(const std::vector<double>& a, const std::vector<double>& b, double confidence = 0.95) {
  if (a.size() != b.size()) {
    alloy::fail(alloy::error_code::invalid_argument, "paired difference of ", a.size(), " and ", b.size(), " orders: pairs need the same orders");
  }
  std::vector<double> difference(a.size());
  for (std::size_t k = 0; k < a.size(); ++k) difference[k] = a[k] - b[k];
  return mean_interval(difference, confidence);
}

}  // namespace alloy_clip
