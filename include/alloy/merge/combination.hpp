#pragma once
// What the methods whose result is a combination of their inputs share (Model Stock, NuSLERP,
// Multi-SLERP, Karcher): each computes its coefficients on the host from the inputs' Gram matrix
// (one pass over the tensor, or over each row), then writes
//   output = sum_i c_i x_i      (per row: c_{r, i} for the elements of row r)
// in one more pass. Angles, norms and iterations of these methods are functions of inner
// products of the inputs, so none of them needs a second copy of a tensor.

#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "alloy/core/config.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/merge/linear_merge.hpp"

namespace alloy::detail {

// The upper triangle of the Gram matrix of x_i = values[first + i] - origin, i < vectors, row by
// row, in f64: origin is values[0] when `from_origin` (then first = 1), else 0.
struct gram_sums {
  std::size_t vectors = 0;
  bool from_origin = false;

  [[nodiscard]] static constexpr std::size_t terms(std::size_t vectors) noexcept { return vectors * (vectors + 1) / 2; }

  template <class Values, class Sums>
  ALLOY_HD void operator()(const Values& values, std::size_t, Sums&& sums) const {
    const std::size_t first = from_origin ? 1 : 0;
    const double origin = from_origin ? static_cast<double>(values[0]) : 0.0;
    std::size_t at = 0;
    for (std::size_t i = 0; i < vectors; ++i) {
      const double xi = static_cast<double>(values[first + i]) - origin;
      for (std::size_t j = i; j < vectors; ++j) sums[at++] += xi * (static_cast<double>(values[first + j]) - origin);
    }
  }

  // The CPU's block form (reduce_sums): each product summed over the block in eight lanes, pair
  // by pair, so that the loop over elements vectorises rather than one chain of additions per sum.
  // Each vector's f64 differences are computed once per block (not once per pair: for 4 models
  // that was 10 conversions and subtractions of three columns per element instead of 4), and the
  // products are added in the same lanes and order as before, so the sums keep their bits.
  void accumulate_block(const float* const* columns, std::size_t count, std::size_t, double* sums) const {
    const std::size_t first = from_origin ? 1 : 0;
    const float* origin = from_origin ? columns[0] : nullptr;
    const auto difference = [&](const float* x, std::size_t e) {
      return static_cast<double>(x[e]) - (origin != nullptr ? static_cast<double>(origin[e]) : 0.0);
    };
    std::size_t at = 0;
    if (vectors > cached_vectors || count > block_elements) {
      for (std::size_t i = 0; i < vectors; ++i) {
        for (std::size_t j = i; j < vectors; ++j) {
          sums[at++] += sum_in_lanes(count, [&](std::size_t e) {
            return difference(columns[first + i], e) * difference(columns[first + j], e);
          });
        }
      }
      return;
    }
    alignas(64) double differences[cached_vectors][block_elements];
    for (std::size_t i = 0; i < vectors; ++i) {
      const float* x = columns[first + i];
      double* d = differences[i];
      if (origin != nullptr) {
        for (std::size_t e = 0; e < count; ++e) d[e] = static_cast<double>(x[e]) - static_cast<double>(origin[e]);
      } else {
        for (std::size_t e = 0; e < count; ++e) d[e] = static_cast<double>(x[e]);
      }
    }
    for (std::size_t i = 0; i < vectors; ++i) {
      const double* di = differences[i];
      for (std::size_t j = i; j < vectors; ++j) {
        const double* dj = differences[j];
        sums[at++] += sum_in_lanes(count, [&](std::size_t e) { return di[e] * dj[e]; });
      }
    }
  }

 private:
  // Up to this many vectors keep their differences on the stack (32 KiB); more recompute them
  // per pair.
  static constexpr std::size_t cached_vectors = 8;
};

// The full symmetric matrix (vectors x vectors, row-major) from one row's upper triangle.
inline std::vector<double> full_gram(const double* upper, std::size_t vectors) {
  std::vector<double> gram(vectors * vectors);
  std::size_t at = 0;
  for (std::size_t i = 0; i < vectors; ++i) {
    for (std::size_t j = i; j < vectors; ++j) gram[i * vectors + j] = gram[j * vectors + i] = upper[at++];
  }
  return gram;
}

// x^T G y for a Gram matrix G of `vectors` vectors.
inline double gram_product(const std::vector<double>& gram, const std::vector<double>& x, const std::vector<double>& y) {
  const std::size_t n = x.size();
  double total = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) total += x[i] * gram[i * n + j] * y[j];
  }
  return total;
}

// sum_i coefficients[row * inputs + i] * values[i], with `row` the element's row.
struct row_weighted_sum_kernel {
  const float* coefficients = nullptr;
  std::size_t inputs = 0;
  tensor_rows rows{};

  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t index) const {
    return weighted(values, coefficients + rows.row_of(index) * inputs);
  }
  // The CPU's block form: no division per element to find its row.
  void evaluate_block(const float* const* columns, std::size_t, std::size_t count, std::size_t first,
                      float* ALLOY_RESTRICT results) const {
    for_each_row_element(rows, columns, inputs, first, count, [&](std::size_t row, std::size_t j, const auto& values) {
      results[j] = weighted(values, coefficients + row * inputs);
    });
  }

 private:
  template <class Values>
  ALLOY_HD ALLOY_ALWAYS_INLINE static float weighted(const Values& values, const float* c) {
    float total = 0.0f;
    for (std::size_t i = 0; i < values.size(); ++i) total += c[i] * values[i];
    return total;
  }
};

// output = sum_i c_{r, i} inputs[i] over the rows of `rows` (coefficients: rows.count x
// inputs.size(), row-major). One row is the vectorised weighted sum.
template <class Backend>
void combine_rows(const Backend& backend, tensor_view output, std::span<const const_tensor_view> inputs,
                  const tensor_rows& rows, std::span<const float> coefficients) {
  const float* staged = stage_arguments(backend, coefficients);
  if (rows.count == 1) {
    elementwise(backend, output, inputs, weighted_sum_kernel{staged, 1.0f});
  } else {
    elementwise(backend, output, inputs, row_weighted_sum_kernel{staged, inputs.size(), rows});
  }
}

}  // namespace alloy::detail
