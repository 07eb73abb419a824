#pragma once
// Reductions over tensors: sums of per-element terms, accumulated in f64 per chunk and combined
// in chunk order, so results do not depend on the thread count.

#include <array>
#include <cstddef>
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

}  // namespace alloy
