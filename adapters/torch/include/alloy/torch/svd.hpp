#pragma once
// torch's singular value decomposition as an alloy::svd_solver (for OPCM, alloy/continual/opcm.hpp),
// on any device torch has: LAPACK on the CPU, cuSOLVER on CUDA. Double precision, full U and V.

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "alloy/continual/subspace.hpp"

namespace alloy::torch_adapter {

struct svd_solver {
  ::torch::Device device = ::torch::kCPU;

  [[nodiscard]] svd_factors full_svd(std::span<const double> matrix, std::size_t rows, std::size_t cols) const {
    const auto host = ::torch::TensorOptions().dtype(::torch::kFloat64);
    const ::torch::Tensor a = ::torch::from_blob(const_cast<double*>(matrix.data()),
                                                 {static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)}, host)
                                  .to(device);  // (read only: from_blob wants a mutable pointer)
    auto [u, s, vh] = ::torch::linalg_svd(a, /*full_matrices=*/true);
    const auto copy = [](const ::torch::Tensor& t) {
      const ::torch::Tensor c = t.to(::torch::kCPU).contiguous();
      return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
    };
    return {copy(u), copy(s), copy(vh.transpose(0, 1))};
  }
};
static_assert(alloy::svd_solver<svd_solver>);

}  // namespace alloy::torch_adapter
