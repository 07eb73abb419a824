#pragma once
// The one dense product alloy needs (folding a LoRA update B A into a weight): out += scale L R
// for row-major f32 matrices, rows in parallel. Each output element sums its r products in order
// of k, in f32, and is then scaled and added once, so the bits do not depend on the thread count.

#include <cstddef>
#include <vector>

#include "alloy/exec/cpu_backend.hpp"

namespace alloy {

// out (m x n) += scale * left (m x r) * right (r x n), all row-major f32 in host memory.
inline void add_scaled_product(const cpu_backend& backend, std::size_t m, std::size_t n, std::size_t r, float scale,
                               const float* left, const float* right, float* out) {
  for_each_index(backend, m, [&](std::size_t i) {
    std::vector<float> sum(n, 0.0f);
    for (std::size_t k = 0; k < r; ++k) {
      const float l = left[i * r + k];
      const float* row = right + k * n;
      for (std::size_t j = 0; j < n; ++j) sum[j] += l * row[j];
    }
    float* target = out + i * n;
    for (std::size_t j = 0; j < n; ++j) target[j] += scale * sum[j];
  });
}

}  // namespace alloy
