// Compiles every merge and alignment kernel for the GPU: the ALLOY_HD function objects the CPU
// backend runs must also be valid device code, so the CUDA backend can run them unchanged.
// Built (not run) wherever a CUDA compiler is found; the GPU tests of the CUDA backend run them.

#include <cstddef>

#include "alloy/align/pam.hpp"
#include "alloy/merge/registry.hpp"

namespace alloy_device_check {

struct register_values {
  const float* values;
  std::size_t count;
  __device__ float operator[](std::size_t i) const { return values[i]; }
  __device__ std::size_t size() const { return count; }
};

template <class Kernel>
__global__ void apply(Kernel kernel, const float* inputs, std::size_t inputs_count, float* output, std::size_t n) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float values[16];
  for (std::size_t j = 0; j < inputs_count && j < 16; ++j) values[j] = inputs[j * n + i];
  output[i] = kernel(register_values{values, inputs_count}, i);
}

template __global__ void apply<alloy::detail::task_vector_kernel>(alloy::detail::task_vector_kernel, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::weighted_sum_kernel>(alloy::detail::weighted_sum_kernel, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::magmax_kernel>(alloy::detail::magmax_kernel, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::two_term_kernel>(alloy::detail::two_term_kernel, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::interpolate_mean_kernel>(alloy::detail::interpolate_mean_kernel, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::pam_reset_kernel>(alloy::detail::pam_reset_kernel, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::l2_pull_gradient>(alloy::detail::l2_pull_gradient, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::sign_agreement_gradient>(alloy::detail::sign_agreement_gradient, const float*, std::size_t, float*, std::size_t);
template __global__ void apply<alloy::detail::cosine_gradient>(alloy::detail::cosine_gradient, const float*, std::size_t, float*, std::size_t);

}  // namespace alloy_device_check
