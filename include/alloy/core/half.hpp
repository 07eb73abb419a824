#pragma once
// 16-bit floating-point storage types. Conversions to f32 are exact; conversions from f32 round
// to nearest, ties to even, with overflow to infinity, gradual underflow through subnormals, and
// NaN kept NaN (quiet, sign and leading payload bits preserved). Written with integer operations
// only, so the same code runs on the host and in CUDA kernels.

#include <bit>
#include <cstdint>

#include "alloy/core/config.hpp"

namespace alloy {
namespace detail {

ALLOY_HD ALLOY_ALWAYS_INLINE std::uint32_t float_bits(float value) noexcept {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  return std::bit_cast<std::uint32_t>(value);
#endif
}

ALLOY_HD ALLOY_ALWAYS_INLINE float bits_float(std::uint32_t bits) noexcept {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  return std::bit_cast<float>(bits);
#endif
}

// x where `keep`, else +0: a select written on the bits, because compilers keep a branch for the
// ternary form under the default floating-point model, and a branch stops vectorisation.
ALLOY_HD ALLOY_ALWAYS_INLINE float keep_or_zero(bool keep, float x) noexcept {
  return bits_float(float_bits(x) & (0u - static_cast<std::uint32_t>(keep)));
}

// condition ? a : b on the bits, for the same reason.
ALLOY_HD ALLOY_ALWAYS_INLINE float select_bits(bool condition, float a, float b) noexcept {
  const std::uint32_t mask = 0u - static_cast<std::uint32_t>(condition);
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

}  // namespace detail

ALLOY_HD ALLOY_ALWAYS_INLINE float bf16_bits_to_f32(std::uint16_t bits) noexcept {
  return detail::bits_float(static_cast<std::uint32_t>(bits) << 16);
}

ALLOY_HD ALLOY_ALWAYS_INLINE std::uint16_t f32_to_bf16_bits(float value) noexcept {
  const std::uint32_t x = detail::float_bits(value);
  // Adding 0x7fff plus the lowest kept bit rounds to nearest even; a carry out of the mantissa
  // moves into the exponent, and past the largest finite value it lands exactly on infinity.
  const std::uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  // NaN: truncating could clear every payload bit and produce infinity; force the quiet bit.
  const std::uint32_t quiet_nan = (x >> 16) | 0x0040u;
  // A select rather than a branch, so that loops over blocks vectorise.
  return static_cast<std::uint16_t>((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

ALLOY_HD ALLOY_ALWAYS_INLINE float f16_bits_to_f32(std::uint16_t bits) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
  const std::uint32_t exponent = (bits >> 10) & 0x1fu;
  std::uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) {  // infinity or NaN, payload kept
    return detail::bits_float(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    if (mantissa == 0) return detail::bits_float(sign);
    // Subnormal half: every one is a normal float. Shift the leading one into the implicit bit.
    std::uint32_t exponent32 = 113;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent32;
    }
    return detail::bits_float(sign | (exponent32 << 23) | ((mantissa & 0x3ffu) << 13));
  }
  return detail::bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

ALLOY_HD ALLOY_ALWAYS_INLINE std::uint16_t f32_to_f16_bits(float value) noexcept {
  const std::uint32_t x = detail::float_bits(value);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {
    if (magnitude == 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
    return static_cast<std::uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));  // quiet NaN
  }
  // 65520 is the midpoint between 65504 (largest half) and 65536; ties go to the even
  // neighbour, which is infinity.
  if (magnitude >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);
  if (magnitude < 0x38800000u) {
    // Result is a half subnormal (or zero): value / 2^-24, rounded to nearest even.
    const std::uint32_t exponent = magnitude >> 23;
    if (exponent < 102) return sign;  // below half of the smallest subnormal: rounds to zero
    const std::uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126 - exponent;  // 14..24
    std::uint32_t result = mantissa >> shift;
    const std::uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1);
    if (remainder > half || (remainder == half && (result & 1u))) ++result;
    return static_cast<std::uint16_t>(sign | result);
  }
  // Normal: rebias the exponent (127 -> 15) and round 23 mantissa bits to 10. A carry propagates
  // into the exponent, which is the correctly rounded result.
  const std::uint32_t rebased = magnitude - (112u << 23);
  std::uint32_t result = rebased >> 13;
  const std::uint32_t remainder = rebased & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;
  return static_cast<std::uint16_t>(sign | result);
}

// IEEE binary16 storage. Arithmetic happens in float: convert, compute, convert back once.
struct float16 {
  std::uint16_t bits = 0;

  float16() = default;
  ALLOY_HD explicit float16(float value) noexcept : bits(f32_to_f16_bits(value)) {}
  ALLOY_HD static float16 from_bits(std::uint16_t raw) noexcept {
    float16 h;
    h.bits = raw;
    return h;
  }
  ALLOY_HD operator float() const noexcept { return f16_bits_to_f32(bits); }  // NOLINT: exact
  friend bool operator==(float16, float16) = default;
};

// bfloat16 storage (the upper half of a float).
struct bfloat16 {
  std::uint16_t bits = 0;

  bfloat16() = default;
  ALLOY_HD explicit bfloat16(float value) noexcept : bits(f32_to_bf16_bits(value)) {}
  ALLOY_HD static bfloat16 from_bits(std::uint16_t raw) noexcept {
    bfloat16 h;
    h.bits = raw;
    return h;
  }
  ALLOY_HD operator float() const noexcept { return bf16_bits_to_f32(bits); }  // NOLINT: exact
  friend bool operator==(bfloat16, bfloat16) = default;
};

static_assert(sizeof(float16) == 2 && sizeof(bfloat16) == 2);

}  // namespace alloy
