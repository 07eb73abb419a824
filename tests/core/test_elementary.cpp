// exp_f64 and log_f64 against the C library: within one ulp over the whole range, the special
// values exact, and the same bits at every dispatch level of the CPU (where loops over them run).

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/core/elementary.hpp"
#include "alloy/exec/cpu_features.hpp"

using namespace alloy;

namespace {

// Distance in ulps between two finite doubles of the same sign (or both zero).
std::uint64_t ulps_apart(double a, double b) {
  const auto ordered = [](double x) {
    const auto bits = static_cast<std::int64_t>(detail::double_bits(x));
    return bits < 0 ? std::numeric_limits<std::int64_t>::min() - bits : bits;
  };
  const std::int64_t d = ordered(a) - ordered(b);
  return static_cast<std::uint64_t>(d < 0 ? -d : d);
}

std::vector<double> arguments(double low, double high, std::size_t count, unsigned seed) {
  std::mt19937_64 random(seed);
  std::uniform_real_distribution<double> uniform(low, high);
  std::vector<double> x(count);
  for (auto& v : x) v = uniform(random);
  return x;
}

}  // namespace

TEST_CASE("exp_f64 is within one ulp of std::exp over the whole range", "[core][elementary]") {
  std::uint64_t worst = 0;
  for (const auto& [low, high] : {std::pair{-1.0, 1.0}, std::pair{-40.0, 40.0}, std::pair{-745.2, 709.79},
                                  std::pair{-1e-6, 1e-6}, std::pair{-745.2, -708.0}}) {
    for (const double x : arguments(low, high, 200000, 7)) {
      const double want = std::exp(x);
      const double got = detail::exp_f64(x);
      INFO("x = " << x);
      REQUIRE(std::isfinite(got) == std::isfinite(want));
      worst = std::max(worst, ulps_apart(got, want));
    }
  }
  CHECK(worst <= 1);
  CHECK(detail::exp_f64(0.0) == 1.0);
  CHECK(detail::exp_f64(-0.0) == 1.0);
  CHECK(detail::exp_f64(709.78) == std::exp(709.78));
  CHECK(std::isinf(detail::exp_f64(709.8)));
  CHECK(std::isinf(detail::exp_f64(1e300)));
  CHECK(std::isinf(detail::exp_f64(std::numeric_limits<double>::infinity())));
  CHECK(detail::exp_f64(-746.0) == 0.0);
  CHECK(detail::exp_f64(-std::numeric_limits<double>::infinity()) == 0.0);
  CHECK(detail::exp_f64(-745.0) == std::exp(-745.0));  // a subnormal result
  CHECK(std::isnan(detail::exp_f64(std::numeric_limits<double>::quiet_NaN())));
}

TEST_CASE("log_f64 is within one ulp of std::log over the whole range", "[core][elementary]") {
  std::uint64_t worst = 0;
  for (const auto& [low, high] : {std::pair{0.5, 2.0}, std::pair{1e-8, 1e8}, std::pair{0.999, 1.001}, std::pair{1.0, 1e300}}) {
    for (const double x : arguments(low, high, 200000, 11)) {
      INFO("x = " << x);
      worst = std::max(worst, ulps_apart(detail::log_f64(x), std::log(x)));
    }
  }
  for (const double x : {1e-310, 4.9e-324, 2.2250738585072014e-308, std::numeric_limits<double>::max(), 1.0 + 1e-15}) {
    INFO("x = " << x);
    worst = std::max(worst, ulps_apart(detail::log_f64(x), std::log(x)));
  }
  CHECK(worst <= 1);
  CHECK(detail::log_f64(1.0) == 0.0);
  CHECK(detail::log_f64(2.0) == std::log(2.0));
  CHECK(detail::log_f64(0.0) == -std::numeric_limits<double>::infinity());
  CHECK(detail::log_f64(-0.0) == -std::numeric_limits<double>::infinity());
  CHECK(std::isnan(detail::log_f64(-1.0)));
  CHECK(std::isnan(detail::log_f64(-std::numeric_limits<double>::infinity())));
  CHECK(detail::log_f64(std::numeric_limits<double>::infinity()) == std::numeric_limits<double>::infinity());
  CHECK(std::isnan(detail::log_f64(std::numeric_limits<double>::quiet_NaN())));
}

TEST_CASE("exp_f64 and log_f64 give the same bits at every dispatch level", "[core][elementary][dispatch]") {
  const std::vector<double> x = arguments(-700.0, 700.0, 4096, 3);
  const auto evaluate = [&](simd_level level) {
    const simd_level previous = set_simd_level(level);
    std::vector<double> out(2 * x.size());
    detail::at_active_simd_level([&] {
      for (std::size_t i = 0; i < x.size(); ++i) out[i] = detail::exp_f64(x[i]);
      for (std::size_t i = 0; i < x.size(); ++i) out[x.size() + i] = detail::log_f64(x[i] < 0 ? -x[i] : x[i]);
    });
    set_simd_level(previous);
    return out;
  };
  const std::vector<double> reference = evaluate(simd_level::baseline);
  for (int level = 1; level <= static_cast<int>(detected_simd_level()); ++level) {
    INFO(to_string(static_cast<simd_level>(level)));
    const std::vector<double> got = evaluate(static_cast<simd_level>(level));
    std::size_t differing = 0;
    for (std::size_t i = 0; i < got.size(); ++i) differing += detail::double_bits(got[i]) != detail::double_bits(reference[i]);
    CHECK(differing == 0);
  }
}
