#pragma once
// What the subspace-based continual mergers (OPCM, DOP) share: the SVD they are given (the
// `svd_solver` concept: Eigen's on the CPU, alloy/eigen/svd.hpp; torch's on any of its devices,
// alloy/torch/svd.hpp), dense products in double precision on the host, and the checks and
// stores of their weights.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/convert.hpp"
#include "alloy/core/error.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

// A full singular value decomposition A = U diag(S) V^T of a rows x cols matrix: U is
// rows x rows and V cols x cols, both row-major, their columns the singular vectors; S holds the
// min(rows, cols) singular values, largest first.
struct svd_factors {
  std::vector<double> u, singular_values, v;
};

// Computes svd_factors of a row-major rows x cols matrix.
template <class Solver>
concept svd_solver = requires(const Solver& solver, std::span<const double> matrix, std::size_t rows, std::size_t cols) {
  { solver.full_svd(matrix, rows, cols) } -> std::same_as<svd_factors>;
};

namespace detail {

// The tensor's elements as doubles (any computable dtype).
inline std::vector<double> to_doubles(const_tensor_view tensor) {
  std::vector<double> values(tensor.numel());
  convert(tensor, tensor_view(std::span<double>(values), tensor.shape()));
  return values;
}

// out (m x n) = op(a) (m x k) * op(b) (k x n), row-major doubles, rows in parallel; op(x) = x, or
// x^T when x is stored transposed (a as k x m, b as n x k).
inline void multiply(const cpu_backend& backend, std::span<const double> a, bool transpose_a, std::span<const double> b,
                     bool transpose_b, std::size_t m, std::size_t k, std::size_t n, std::span<double> out) {
  for_each_index(backend, m, [&](std::size_t i) {
    double* row = out.data() + i * n;
    const auto a_at = [&](std::size_t p) { return transpose_a ? a[p * m + i] : a[i * k + p]; };
    if (transpose_b) {  // row j of b is column j of op(b): dot products
      for (std::size_t j = 0; j < n; ++j) {
        double sum = 0;
        for (std::size_t p = 0; p < k; ++p) sum += a_at(p) * b[j * k + p];
        row[j] = sum;
      }
      return;
    }
    std::fill(row, row + n, 0.0);
    for (std::size_t p = 0; p < k; ++p) {
      const double scale = a_at(p);
      const double* source = b.data() + p * n;
      for (std::size_t j = 0; j < n; ++j) row[j] += scale * source[j];
    }
  });
}

// solver.full_svd(matrix), its factors' sizes checked (a solver is the caller's code).
template <svd_solver Solver>
svd_factors checked_svd(const Solver& solver, std::span<const double> matrix, std::size_t rows, std::size_t cols,
                        std::string_view who) {
  svd_factors factors = solver.full_svd(matrix, rows, cols);
  if (factors.u.size() != rows * rows || factors.v.size() != cols * cols ||
      factors.singular_values.size() != std::min(rows, cols)) {
    fail(error_code::shape_mismatch, who, ": the SVD solver returned factors of the wrong size for a ", rows, " x ", cols,
         " matrix");
  }
  return factors;
}

// Every tensor of `initial` is in `weights`, with its shape and a computable dtype.
template <parameter_store Store>
void check_same_tensors(const memory_store& initial, const Store& weights, const std::string& what) {
  for (const auto& name : initial.names()) {
    const auto found = weights.find(name);
    if (!found) fail(error_code::not_found, what, " lack tensor ", quoted{name});
    if (!(found->shape() == initial.view(name).shape())) {
      fail(error_code::shape_mismatch, what, ": tensor ", quoted{name}, " has shape ", found->shape(), " but ",
           initial.view(name).shape(), " in the initial weights");
    }
    check_computable(*found, what + ": tensor '" + name + "'");
  }
}

// target = base + factor * offset, rounded once into the target's dtype.
inline void store_offset(tensor_view target, const std::vector<double>& base, const std::vector<double>& offset, double factor) {
  std::vector<double> values(base.size());
  for (std::size_t k = 0; k < values.size(); ++k) values[k] = base[k] + factor * offset[k];
  convert(const_tensor_view(std::span<const double>(values), target.shape()), target);
}

}  // namespace detail
}  // namespace alloy
