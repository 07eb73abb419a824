// The registry's policies instantiated for the CUDA backend: every merge method's kernels compiled
// once, here, for the GPU architectures the build names (sm_90 and PTX by default).

#include "alloy/cuda/merge.hpp"
#include "alloy/cuda/primitives.cuh"

namespace alloy::cuda {

void merge_with(const merge_policy& policy, const backend& gpu, const merge_inputs& in, tensor_view output) {
  std::visit([&](const auto& p) { p.merge(gpu, in, output); }, policy);
}

device_mask magnitude_band_mask(const backend& gpu, std::span<const const_tensor_view> inputs, std::size_t first,
                                std::size_t last) {
  if (inputs.empty() || inputs.size() > 2) {
    alloy::fail(error_code::invalid_argument, "magnitude_band_mask takes one tensor or a (base, model) pair, not ",
                        inputs.size(), " tensors");
  }
  const std::size_t n = inputs[0].numel();
  return inputs.size() == 1 ? rank_band_mask(gpu, inputs, n, alloy::detail::first_value{}, first, last)
                            : rank_band_mask(gpu, inputs, n, alloy::detail::task_vector_delta{}, first, last);
}

}  // namespace alloy::cuda
