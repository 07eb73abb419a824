#pragma once
// Blocks of f16 and bf16 values to f32 and back: what the CPU backend does to every 16-bit input
// it reads and every 16-bit output it writes. The portable loops are the definition (half.hpp's
// conversions, element by element); the AVX2 + F16C and AVX-512 loops compute the same bits
// eight or sixteen at a time, chosen at run time (cpu_features.hpp).
//
// Why the same bits: bf16 -> f32 is a shift; f32 -> bf16 is half.hpp's integer rounding written
// on vector lanes; F16C's f32 -> f16 rounds to nearest even, overflows to infinity, keeps
// subnormals and quiets a NaN keeping its leading payload bits, which is what f32_to_f16_bits
// does; its f16 -> f32 is exact but for signalling NaNs, which it quiets, so those lanes are
// rebuilt from their bits (tests/exec/test_block_convert.cpp checks every 16-bit pattern and
// every rounding case).

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "alloy/core/half.hpp"
#include "alloy/exec/cpu_features.hpp"

#if ALLOY_X86_DISPATCH
#include <immintrin.h>
#endif

namespace alloy::detail {

inline void bf16_to_f32_portable(const std::byte* in, float* out, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, in + i * 2, 2);
    out[i] = bf16_bits_to_f32(bits);
  }
}

inline void f16_to_f32_portable(const std::byte* in, float* out, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    std::uint16_t bits;
    std::memcpy(&bits, in + i * 2, 2);
    out[i] = f16_bits_to_f32(bits);
  }
}

inline void f32_to_bf16_portable(const float* in, std::byte* out, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint16_t bits = f32_to_bf16_bits(in[i]);
    std::memcpy(out + i * 2, &bits, 2);
  }
}

inline void f32_to_f16_portable(const float* in, std::byte* out, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    const std::uint16_t bits = f32_to_f16_bits(in[i]);
    std::memcpy(out + i * 2, &bits, 2);
  }
}

#if ALLOY_X86_DISPATCH

ALLOY_TARGET_AVX2 inline void bf16_to_f32_avx2(const std::byte* in, float* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i * 2));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16)));
  }
  bf16_to_f32_portable(in + i * 2, out + i, count - i);
}

// F16C makes a signalling NaN quiet; the definition (and NumPy) keeps every payload bit. NaN
// lanes are therefore rebuilt from their bits: sign, all-ones exponent, payload shifted up.
ALLOY_TARGET_AVX2 inline void f16_to_f32_avx2(const std::byte* in, float* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i * 2));
    const __m256i wide = _mm256_cvtepu16_epi32(half);
    const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(wide, _mm256_set1_epi32(0x7fff)), _mm256_set1_epi32(0x7c00));
    const __m256i nan = _mm256_or_si256(
        _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(wide, _mm256_set1_epi32(0x8000)), 16), _mm256_set1_epi32(0x7f800000)),
        _mm256_slli_epi32(_mm256_and_si256(wide, _mm256_set1_epi32(0x3ff)), 13));
    const __m256i converted = _mm256_castps_si256(_mm256_cvtph_ps(half));
    _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_blendv_epi8(converted, nan, is_nan)));
  }
  f16_to_f32_portable(in + i * 2, out + i, count - i);
}

// f32_to_bf16_bits on eight lanes: round to nearest even by adding 0x7fff plus the lowest kept
// bit, a NaN made quiet instead.
ALLOY_TARGET_AVX2 inline __m256i bf16_round_avx2(__m256i x) noexcept {
  const __m256i high = _mm256_srli_epi32(x, 16);
  const __m256i odd = _mm256_and_si256(high, _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7fff)), odd), 16);
  const __m256i quiet = _mm256_or_si256(high, _mm256_set1_epi32(0x0040));
  const __m256i magnitude = _mm256_and_si256(x, _mm256_set1_epi32(0x7fffffff));
  const __m256i is_nan = _mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x7f800000));  // both below 2^31
  return _mm256_blendv_epi8(rounded, quiet, is_nan);
}

ALLOY_TARGET_AVX2 inline void f32_to_bf16_avx2(const float* in, std::byte* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256i bits = bf16_round_avx2(_mm256_castps_si256(_mm256_loadu_ps(in + i)));
    // Every lane is below 2^16, so the saturating pack is exact; it packs within 128-bit halves,
    // and the permute brings the two halves' results together.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0b1000);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * 2), _mm256_castsi256_si128(packed));
  }
  f32_to_bf16_portable(in + i, out + i * 2, count - i);
}

ALLOY_TARGET_AVX2 inline void f32_to_f16_avx2(const float* in, std::byte* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m128i half = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i * 2), half);
  }
  f32_to_f16_portable(in + i, out + i * 2, count - i);
}

// Every lane. The AVX-512 loops use the zero-masked forms of the intrinsics with it: GCC 12 warns
// (maybe-uninitialized) inside the unmasked ones, which start from an undefined vector.
inline constexpr __mmask16 every_lane = 0xffff;

ALLOY_TARGET_AVX512 inline void bf16_to_f32_avx512(const std::byte* in, float* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i * 2));
    _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(every_lane, _mm512_maskz_cvtepu16_epi32(every_lane, half), 16)));
  }
  bf16_to_f32_avx2(in + i * 2, out + i, count - i);
}

ALLOY_TARGET_AVX512 inline void f16_to_f32_avx512(const std::byte* in, float* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i * 2));
    const __m512i wide = _mm512_maskz_cvtepu16_epi32(every_lane, half);
    const __mmask16 is_nan =
        _mm512_cmpgt_epi32_mask(_mm512_and_si512(wide, _mm512_set1_epi32(0x7fff)), _mm512_set1_epi32(0x7c00));
    const __m512i nan = _mm512_or_si512(
        _mm512_or_si512(_mm512_maskz_slli_epi32(every_lane, _mm512_and_si512(wide, _mm512_set1_epi32(0x8000)), 16),
                        _mm512_set1_epi32(0x7f800000)),
        _mm512_maskz_slli_epi32(every_lane, _mm512_and_si512(wide, _mm512_set1_epi32(0x3ff)), 13));
    const __m512i converted = _mm512_castps_si512(_mm512_maskz_cvtph_ps(every_lane, half));
    _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_mask_blend_epi32(is_nan, converted, nan)));
  }
  f16_to_f32_avx2(in + i * 2, out + i, count - i);
}

ALLOY_TARGET_AVX512 inline void f32_to_bf16_avx512(const float* in, std::byte* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m512i x = _mm512_castps_si512(_mm512_loadu_ps(in + i));
    const __m512i high = _mm512_maskz_srli_epi32(every_lane, x, 16);
    const __m512i odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
    const __m512i rounded = _mm512_maskz_srli_epi32(every_lane, _mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)), odd), 16);
    const __m512i quiet = _mm512_or_si512(high, _mm512_set1_epi32(0x0040));
    const __mmask16 is_nan =
        _mm512_cmpgt_epi32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
    const __m512i bits = _mm512_mask_blend_epi32(is_nan, rounded, quiet);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * 2), _mm512_maskz_cvtepi32_epi16(every_lane, bits));  // lanes < 2^16: exact
  }
  f32_to_bf16_avx2(in + i, out + i * 2, count - i);
}

ALLOY_TARGET_AVX512 inline void f32_to_f16_avx512(const float* in, std::byte* out, std::size_t count) noexcept {
  std::size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const __m256i half = _mm512_maskz_cvtps_ph(every_lane, _mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i * 2), half);
  }
  f32_to_f16_avx2(in + i, out + i * 2, count - i);
}

#endif  // ALLOY_X86_DISPATCH

// The dispatched forms: the widest loop the active level allows.
#if ALLOY_X86_DISPATCH
#define ALLOY_DISPATCH_CONVERSION(name, ...)                         \
  switch (active_simd_level()) {                                     \
    case simd_level::avx512: return name##_avx512(__VA_ARGS__);      \
    case simd_level::avx2: return name##_avx2(__VA_ARGS__);          \
    case simd_level::baseline: break;                                \
  }                                                                  \
  name##_portable(__VA_ARGS__)
#else
#define ALLOY_DISPATCH_CONVERSION(name, ...) name##_portable(__VA_ARGS__)
#endif

inline void bf16_to_f32(const std::byte* in, float* out, std::size_t count) { ALLOY_DISPATCH_CONVERSION(bf16_to_f32, in, out, count); }
inline void f16_to_f32(const std::byte* in, float* out, std::size_t count) { ALLOY_DISPATCH_CONVERSION(f16_to_f32, in, out, count); }
inline void f32_to_bf16(const float* in, std::byte* out, std::size_t count) { ALLOY_DISPATCH_CONVERSION(f32_to_bf16, in, out, count); }
inline void f32_to_f16(const float* in, std::byte* out, std::size_t count) { ALLOY_DISPATCH_CONVERSION(f32_to_f16, in, out, count); }

#undef ALLOY_DISPATCH_CONVERSION

}  // namespace alloy::detail
