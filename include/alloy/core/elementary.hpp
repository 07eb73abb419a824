#pragma once
// exp and log in f64 written with IEEE additions, multiplications, one division and integer
// operations on the bits: no fused multiply-adds, no tables, no libm. So they give the same bits
// at every dispatch level of the CPU backend, on the GPU (built without contraction) and with any
// C library, and, having no branches on the data, a loop over them vectorises (a call into libm
// per element does not). Both are within about one ulp of the exact result
// (tests/core/test_elementary.cpp measures them against std::exp and std::log).
//
//   exp: x = k ln2 + r, |r| <= ln2 / 2 (Cody and Waite's two-part ln2, so k ln2 is exact), the
//        Taylor series of exp(r) to degree 13 (its remainder is below 2^-57), then 2^k applied
//        in two halves so that neither overflows on the way to a subnormal or infinite result.
//   log: x = 2^e z, z in [sqrt(2)/2, sqrt(2)), and log z from s = (z - 1) / (z + 1) with the
//        minimax polynomial of fdlibm's e_log.c (the same reduction and coefficients).

#include <cstdint>

#include "alloy/core/config.hpp"

#if !defined(__CUDA_ARCH__)
#include <bit>
#endif

namespace alloy::detail {

ALLOY_HD ALLOY_ALWAYS_INLINE std::uint64_t double_bits(double value) noexcept {
#if defined(__CUDA_ARCH__)
  return static_cast<std::uint64_t>(__double_as_longlong(value));
#else
  return std::bit_cast<std::uint64_t>(value);
#endif
}

ALLOY_HD ALLOY_ALWAYS_INLINE double bits_double(std::uint64_t bits) noexcept {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  return std::bit_cast<double>(bits);
#endif
}

// condition ? a : b on the bits (a ternary on doubles may stay a branch, which stops vectorisation).
ALLOY_HD ALLOY_ALWAYS_INLINE double select_double(bool condition, double a, double b) noexcept {
  const std::uint64_t mask = std::uint64_t{0} - static_cast<std::uint64_t>(condition);
  return bits_double((double_bits(a) & mask) | (double_bits(b) & ~mask));
}

// 2^n for an integer n in [-1022, 1023], from its exponent field.
ALLOY_HD ALLOY_ALWAYS_INLINE double power_of_two(std::uint64_t biased_exponent) noexcept {
  return bits_double(biased_exponent << 52);
}

// e^x, correct to about one ulp, for every double (NaN stays NaN; +inf and overflow give +inf;
// -inf and underflow give +0).
ALLOY_HD ALLOY_ALWAYS_INLINE double exp_f64(double x) noexcept {
  constexpr double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer kept in the low bits
  constexpr double log2e = 1.4426950408889634;
  constexpr double ln2_hi = 6.93147180369123816490e-01;  // 0x3fe62e42fee00000: k ln2_hi is exact for |k| < 2^11
  constexpr double ln2_lo = 1.90821492927058770002e-10;  // 0x3dea39ef35793c76
  // Beyond these every result is +inf or +0; clamping keeps k within the range 2^k can take in
  // two halves. Comparisons with NaN are false: NaN passes through and stays NaN.
  double clamped = select_double(x > 710.0, 710.0, x);
  clamped = select_double(clamped < -746.0, -746.0, clamped);
  const double shifted = clamped * log2e + shifter;
  const double k = shifted - shifter;
  const double r = (clamped - k * ln2_hi) - k * ln2_lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // k + 2048 in [972, 3072] is the low bits of `shifted` (offset by the shifter's): split k into
  // two halves of at most 538 in magnitude, each a normal power of two.
  const std::uint64_t k_offset = (double_bits(shifted) - double_bits(shifter)) + 2048u;
  const std::uint64_t half = k_offset >> 1;  // floor((k + 2048) / 2) = floor(k / 2) + 1024
  return (p * power_of_two(half - 1024u + 1023u)) * power_of_two(k_offset - half - 1024u + 1023u);
}

// The natural logarithm, correct to about one ulp, for every double (log 0 = -inf, log of a
// negative number or NaN = NaN, log +inf = +inf).
ALLOY_HD ALLOY_ALWAYS_INLINE double log_f64(double x) noexcept {
  constexpr double ln2_hi = 6.93147180369123816490e-01;
  constexpr double ln2_lo = 1.90821492927058770002e-10;
  constexpr double lg1 = 6.666666666666735130e-01;
  constexpr double lg2 = 3.999999999940941908e-01;
  constexpr double lg3 = 2.857142874366239149e-01;
  constexpr double lg4 = 2.222219843214978396e-01;
  constexpr double lg5 = 1.818357216161805012e-01;
  constexpr double lg6 = 1.531383769920937332e-01;
  constexpr double lg7 = 1.479819860511658591e-01;
  constexpr std::uint64_t smallest_normal = 0x0010000000000000ull;
  constexpr std::uint64_t sqrt_half = 0x3fe6a09e667f3bcdull;  // sqrt(2) / 2
  // Subnormals scaled into the normal range first (by 2^54), the exponent corrected below.
  const bool subnormal = double_bits(x) < smallest_normal;
  const double scaled = select_double(subnormal, x * 18014398509481984.0, x);
  const std::uint64_t bits = double_bits(scaled);
  // x = 2^e z with z in [sqrt(2)/2, sqrt(2)): e is the exponent of x / (sqrt(2)/2), as a
  // 12-bit two's complement field (no arithmetic shift needed).
  const std::uint64_t offset = bits - sqrt_half;
  const std::uint64_t exponent_field = (offset >> 52) & 0xfffu;
  const double z = bits_double(bits - (offset & 0xfff0000000000000ull));
  // e + 2048 as a double, exactly, without an integer conversion: 2^52 + (e + 2048) - (2^52 + 2048).
  const double e = bits_double(0x4330000000000000ull | (exponent_field ^ 0x800u)) - 4503599627372544.0 -
                   select_double(subnormal, 54.0, 0.0);
  const double f = z - 1.0;  // exact: z is within a factor 2 of 1
  const double s = f / (2.0 + f);
  const double s2 = s * s;
  const double s4 = s2 * s2;
  const double t1 = s4 * (lg2 + s4 * (lg4 + s4 * lg6));
  const double t2 = s2 * (lg1 + s4 * (lg3 + s4 * (lg5 + s4 * lg7)));
  const double r = t2 + t1;
  const double half_f2 = 0.5 * f * f;
  double result = e * ln2_hi - ((half_f2 - (s * (half_f2 + r) + e * ln2_lo)) - f);
  // The special cases: +0 and -0 give -inf, negative numbers NaN, +inf itself, NaN itself.
  const double infinity = bits_double(0x7ff0000000000000ull);
  result = select_double(x == 0.0, -infinity, result);
  result = select_double(x < 0.0, bits_double(0x7ff8000000000000ull), result);
  result = select_double(x == infinity, infinity, result);
  return select_double(x != x, x, result);
}

}  // namespace alloy::detail
