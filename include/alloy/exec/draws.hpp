#pragma once
// Blocks of counter-based uniform draws on the CPU: out[j] = uniform01(stream_key, first + j), the
// same bits as random.hpp's per-element definition at every dispatch level.
//
// SplitMix64's finaliser multiplies 64-bit lanes. AVX-512 (DQ) has that multiply, and the portable
// loop vectorises there; AVX2 has none, and the compiler leaves the loop scalar. At AVX2 the draws
// are therefore computed here four lanes at a time, each 64-bit product built from three 32 x 32
// -> 64-bit multiplies (the low 64 bits of a product need no more), which is exact.

#include <cstddef>
#include <cstdint>

#include "alloy/exec/cpu_features.hpp"
#include "alloy/exec/random.hpp"

#if ALLOY_X86_DISPATCH
#include <immintrin.h>
#endif

namespace alloy::detail {

inline constexpr std::uint64_t golden_gamma = 0x9e3779b97f4a7c15ull;  // SplitMix64's increment

#if ALLOY_X86_DISPATCH
// The low 64 bits of each lane times `constant`: lo*lo + ((hi*lo + lo*hi) << 32).
ALLOY_TARGET_AVX2 inline __m256i multiply_lanes_u64(__m256i a, std::uint64_t constant) noexcept {
  const __m256i low = _mm256_set1_epi64x(static_cast<long long>(constant & 0xffffffffu));
  const __m256i high = _mm256_set1_epi64x(static_cast<long long>(constant >> 32));
  const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), low), _mm256_mul_epu32(a, high));
  return _mm256_add_epi64(_mm256_mul_epu32(a, low), _mm256_slli_epi64(cross, 32));
}

ALLOY_TARGET_AVX2 inline __m256i mix64_lanes(__m256i z) noexcept {
  z = multiply_lanes_u64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), 0xbf58476d1ce4e5b9ull);
  z = multiply_lanes_u64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94d049bb133111ebull);
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

// Eight draws per iteration: two vectors of four counters, their top 24 bits gathered into one
// vector of eight 32-bit integers, converted (exactly) and scaled by 2^-24 (exactly).
ALLOY_TARGET_AVX2 inline void uniform_draws_avx2(std::uint64_t stream_key, std::uint64_t first, std::size_t count,
                                                 float* out) noexcept {
  // The mixer's input at counter c is stream_key + (c + 1) * gamma (mod 2^64): a progression in c.
  const std::uint64_t start = stream_key + (first + 1) * golden_gamma;
  __m256i low = _mm256_set_epi64x(static_cast<long long>(start + 3 * golden_gamma), static_cast<long long>(start + 2 * golden_gamma),
                                  static_cast<long long>(start + golden_gamma), static_cast<long long>(start));
  __m256i high = _mm256_add_epi64(low, _mm256_set1_epi64x(static_cast<long long>(4 * golden_gamma)));
  const __m256i step = _mm256_set1_epi64x(static_cast<long long>(8 * golden_gamma));
  const __m256i odd_halves = _mm256_setr_epi32(1, 3, 5, 7, 0, 0, 0, 0);
  const __m256 scale = _mm256_set1_ps(1.0f / 16777216.0f);
  std::size_t j = 0;
  for (; j + 8 <= count; j += 8) {
    // bits >> 40 sits in the upper 32-bit half of each lane, shifted right by 8.
    const __m256i a = _mm256_srli_epi32(mix64_lanes(low), 8);
    const __m256i b = _mm256_srli_epi32(mix64_lanes(high), 8);
    const __m128i a4 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(a, odd_halves));
    const __m128i b4 = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(b, odd_halves));
    const __m256i top = _mm256_inserti128_si256(_mm256_castsi128_si256(a4), b4, 1);
    _mm256_storeu_ps(out + j, _mm256_mul_ps(_mm256_cvtepi32_ps(top), scale));
    low = _mm256_add_epi64(low, step);
    high = _mm256_add_epi64(high, step);
  }
  for (; j < count; ++j) out[j] = uniform01(stream_key, first + j);
}
#endif

// out[j] = uniform01(stream_key, first + j) for j < count, at the active dispatch level. Called
// from loops already compiled for a level: the check costs a load per block.
ALLOY_ALWAYS_INLINE void uniform_draws(std::uint64_t stream_key, std::uint64_t first, std::size_t count, float* out) {
#if ALLOY_X86_DISPATCH
  if (active_simd_level() == simd_level::avx2) {
    uniform_draws_avx2(stream_key, first, count, out);
    return;
  }
#endif
  for (std::size_t j = 0; j < count; ++j) out[j] = uniform01(stream_key, first + j);
}

}  // namespace alloy::detail
