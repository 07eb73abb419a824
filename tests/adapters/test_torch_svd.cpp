// torch's SVD as alloy's svd_solver (alloy/torch/svd.hpp), on the CPU here (the same code runs
// cuSOLVER on a CUDA device): full factors that reconstruct the matrix, orthonormal U and V,
// singular values largest first, and OPCM's projected update of a hand-computed case.

#include <torch/torch.h>  // (before Catch: torch defines a CHECK macro of its own)

#include <cmath>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/torch.hpp"

TEST_CASE("torch's SVD is a full svd_solver", "[torch][svd]") {
  const std::size_t rows = 5, cols = 3;
  std::vector<double> a(rows * cols);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = std::sin(1.7 * static_cast<double>(i) + 0.3);
  const alloy::svd_factors f = alloy::torch_adapter::svd_solver{}.full_svd(a, rows, cols);
  REQUIRE(f.u.size() == rows * rows);
  REQUIRE(f.v.size() == cols * cols);
  REQUIRE(f.singular_values.size() == cols);
  for (std::size_t k = 1; k < cols; ++k) CHECK(f.singular_values[k - 1] >= f.singular_values[k]);
  for (std::size_t i = 0; i < rows; ++i) {
    for (std::size_t j = 0; j < cols; ++j) {
      double sum = 0;
      for (std::size_t k = 0; k < cols; ++k) sum += f.u[i * rows + k] * f.singular_values[k] * f.v[j * cols + k];
      CHECK(sum == Approx(a[i * cols + j]).margin(1e-12));
    }
  }
  for (std::size_t p = 0; p < rows; ++p) {
    for (std::size_t q = 0; q < rows; ++q) {
      double dot = 0;
      for (std::size_t i = 0; i < rows; ++i) dot += f.u[i * rows + p] * f.u[i * rows + q];
      CHECK(dot == Approx(p == q ? 1.0 : 0.0).margin(1e-12));
    }
  }
  for (std::size_t p = 0; p < cols; ++p) {
    for (std::size_t q = 0; q < cols; ++q) {
      double dot = 0;
      for (std::size_t j = 0; j < cols; ++j) dot += f.v[j * cols + p] * f.v[j * cols + q];
      CHECK(dot == Approx(p == q ? 1.0 : 0.0).margin(1e-12));
    }
  }
}

TEST_CASE("OPCM's projected update through torch's SVD", "[torch][svd][opcm]") {
  // merged = diag(3, 1, 0.5); update = e1 e2^T + e2 e1^T + e3 e3^T. At alpha 0.7 (r = 1) the
  // diagonal goes and the off-diagonal pair stays; at alpha 0.9 (r = 2) everything goes.
  const std::vector<double> merged = {3, 0, 0, 0, 1, 0, 0, 0, 0.5};
  const std::vector<double> update = {0, 1, 0, 1, 0, 0, 0, 0, 1};
  const alloy::cpu_backend backend{1};
  const auto kept = alloy::opcm_projected_update(backend, alloy::torch_adapter::svd_solver{}, merged, update, 3, 3, 0.7);
  const std::vector<double> want = {0, 1, 0, 1, 0, 0, 0, 0, 0};
  for (std::size_t i = 0; i < 9; ++i) CHECK(kept[i] == Approx(want[i]).margin(1e-12));
  const auto none = alloy::opcm_projected_update(backend, alloy::torch_adapter::svd_solver{}, merged, update, 3, 3, 0.9);
  for (const double x : none) CHECK(x == Approx(0).margin(1e-12));
}
