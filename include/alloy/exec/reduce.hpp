#pragma once
// Reductions over tensors: sums of per-element terms, accumulated in f64 per chunk and combined
// in chunk order, so results do not depend on the thread count.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <span>
#include <vector>

#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"

namespace alloy {

// Sums `terms` per-element quantities at once: accumulate(values, index, sums) adds element
// `index`'s contributions into sums[0 .. terms).
template <class Accumulate>
std::vector<double> reduce_sums(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                std::size_t elements, std::size_t terms, const Accumulate& accumulate) {
  std::vector<std::vector<double>> partial(cpu_backend::chunk_count(elements));
  for_each_block(backend, inputs, elements, [&](std::size_t chunk) {
    partial[chunk].assign(terms, 0.0);
    return [sums = partial[chunk].data(), &accumulate, &inputs](const float* const* columns, std::size_t count,
                                                       std::size_t first) {
      for (std::size_t j = 0; j < count; ++j) accumulate(detail::block_values{columns, j, inputs.size()}, first + j, sums);
    };
  });
  std::vector<double> total(terms, 0.0);
  for (const auto& chunk : partial) {
    for (std::size_t n = 0; n < chunk.size(); ++n) total[n] += chunk[n];
  }
  return total;
}

template <std::size_t N, class Term>
std::array<double, N> reduce_sum(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                                 std::size_t elements, const Term& term) {
  const auto sums = reduce_sums(backend, inputs, elements, N, [&term](const auto& values, std::size_t index, double* out) {
    const std::array<double, N> t = term(values, index);
    for (std::size_t n = 0; n < N; ++n) out[n] += t[n];
  });
  std::array<double, N> result{};
  for (std::size_t n = 0; n < N; ++n) result[n] = sums[n];
  return result;
}

inline double sum(const cpu_backend& backend, const_tensor_view x) {
  const const_tensor_view inputs[] = {x};
  return reduce_sum<1>(backend, inputs, x.numel(), [](const auto& v, std::size_t) {
    return std::array<double, 1>{static_cast<double>(v[0])};
  })[0];
}

inline double dot(const cpu_backend& backend, const_tensor_view x, const_tensor_view y) {
  const const_tensor_view inputs[] = {x, y};
  return reduce_sum<1>(backend, inputs, x.numel(), [](const auto& v, std::size_t) {
    return std::array<double, 1>{static_cast<double>(v[0]) * static_cast<double>(v[1])};
  })[0];
}

inline double squared_norm(const cpu_backend& backend, const_tensor_view x) {
  const const_tensor_view inputs[] = {x};
  return reduce_sum<1>(backend, inputs, x.numel(), [](const auto& v, std::size_t) {
    return std::array<double, 1>{static_cast<double>(v[0]) * static_cast<double>(v[0])};
  })[0];
}

namespace detail {

// The first element in [begin, end) whose bits mark a NaN or an infinity (exponent all ones),
// or `end`. Blocks of 256 are tested without branches (so they vectorise); only a block that
// holds one is searched element by element.
template <class Bits>
std::size_t first_non_finite_bits(const std::byte* data, std::size_t begin, std::size_t end, Bits exponent) {
  constexpr std::size_t block = 256;
  for (std::size_t first = begin; first < end; first += block) {
    const std::size_t last = std::min(end, first + block);
    Bits values[block];
    std::memcpy(values, data + first * sizeof(Bits), (last - first) * sizeof(Bits));
    bool any = false;
    for (std::size_t i = 0; i < last - first; ++i) any |= (values[i] & exponent) == exponent;
    if (!any) continue;
    for (std::size_t i = 0; i < last - first; ++i) {
      if ((values[i] & exponent) == exponent) return first + i;
    }
  }
  return end;
}

}  // namespace detail

// The index of the first NaN or infinity in `x` (in element order), or nothing. Integer and
// boolean tensors have none. F8_E4M3 has no infinities; its NaN (S.1111.111) is found.
inline std::optional<std::size_t> first_non_finite(const cpu_backend& backend, const_tensor_view x) {
  const std::size_t none = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> found(cpu_backend::chunk_count(x.numel()), none);
  const std::byte* data = x.data();
  for_each_chunk(backend, x.numel(), [&](std::size_t chunk, std::size_t begin, std::size_t end) {
    std::size_t at = end;
    switch (x.dtype()) {
      case dtype::f64: at = detail::first_non_finite_bits<std::uint64_t>(data, begin, end, 0x7ff0000000000000ull); break;
      case dtype::f32: at = detail::first_non_finite_bits<std::uint32_t>(data, begin, end, 0x7f800000u); break;
      case dtype::f16: at = detail::first_non_finite_bits<std::uint16_t>(data, begin, end, std::uint16_t{0x7c00}); break;
      case dtype::bf16: at = detail::first_non_finite_bits<std::uint16_t>(data, begin, end, std::uint16_t{0x7f80}); break;
      case dtype::f8_e4m3: at = detail::first_non_finite_bits<std::uint8_t>(data, begin, end, std::uint8_t{0x7f}); break;
      case dtype::f8_e5m2: at = detail::first_non_finite_bits<std::uint8_t>(data, begin, end, std::uint8_t{0x7c}); break;
      default: break;
    }
    if (at != end) found[chunk] = at;
  });
  const auto first = std::find_if(found.begin(), found.end(), [&](std::size_t at) { return at != none; });
  if (first == found.end()) return std::nullopt;
  return *first;
}

}  // namespace alloy
