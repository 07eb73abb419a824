#pragma once
// Counter-based random numbers: a pure function of (seed, tensor name, model index, element
// index), so a random mask has the same bits for the same inputs whatever the thread count,
// the chunking or the device. The mixing function is SplitMix64's finaliser; streams are keyed
// by a 64-bit FNV-1a hash of the tensor name. docs/policies.md specifies it bit for bit so that
// other tools can reproduce alloy's masks.

#include <cstdint>
#include <string_view>

#include "alloy/core/config.hpp"

namespace alloy {

ALLOY_HD constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr std::uint64_t fnv1a64(std::string_view text) noexcept {
  std::uint64_t hash = 0xcbf29ce484222325ull;
  for (char c : text) {
    hash ^= static_cast<std::uint8_t>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

// The key of one random stream: one tensor of one model under one seed.
constexpr std::uint64_t random_stream_key(std::uint64_t seed, std::string_view tensor_name,
                                          std::uint64_t model_index) noexcept {
  return mix64(mix64(seed ^ 0x9e3779b97f4a7c15ull) ^ fnv1a64(tensor_name)) + model_index * 0x9e3779b97f4a7c15ull;
}

// A uniform number in [0, 1) with 24 random bits (exactly representable in float): SplitMix64's
// output at position `counter` of the stream that starts at `stream_key`.
ALLOY_HD ALLOY_ALWAYS_INLINE float uniform01(std::uint64_t stream_key, std::uint64_t counter) noexcept {
  const std::uint64_t bits = mix64(stream_key + (counter + 1) * 0x9e3779b97f4a7c15ull);
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

}  // namespace alloy
