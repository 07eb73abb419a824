#pragma once
// Eigen's singular value decomposition as an alloy::svd_solver (for OPCM, alloy/continual/opcm.hpp):
// BDCSVD in double precision, full U and V.

#include <cstddef>
#include <span>

#include <Eigen/SVD>

#include "alloy/continual/subspace.hpp"

namespace alloy::eigen {

struct svd_solver {
  [[nodiscard]] svd_factors full_svd(std::span<const double> matrix, std::size_t rows, std::size_t cols) const {
    using row_major = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::Map<const row_major> a(matrix.data(), static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
    const Eigen::BDCSVD<Eigen::MatrixXd> svd(a, Eigen::ComputeFullU | Eigen::ComputeFullV);
    svd_factors factors;
    factors.u.resize(rows * rows);
    factors.v.resize(cols * cols);
    factors.singular_values.assign(svd.singularValues().data(), svd.singularValues().data() + svd.singularValues().size());
    Eigen::Map<row_major>(factors.u.data(), static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(rows)) = svd.matrixU();
    Eigen::Map<row_major>(factors.v.data(), static_cast<Eigen::Index>(cols), static_cast<Eigen::Index>(cols)) = svd.matrixV();
    return factors;
  }
};
static_assert(alloy::svd_solver<svd_solver>);

}  // namespace alloy::eigen
