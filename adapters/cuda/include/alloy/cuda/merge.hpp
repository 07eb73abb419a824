#pragma once
// Merging on the GPU from any C++ compiler: alloy::cuda::merge_with runs a merge policy with the
// CUDA backend. It is the registry's alloy::merge_with instantiated for alloy::cuda::backend, compiled
// once by nvcc into the alloy::cuda library, so code built by g++ or clang (the torch adapter,
// alloy-merge, a user's training loop) needs no CUDA compiler.
//
//   alloy::cuda::backend gpu(stream);                        // or backend::with_own_stream()
//   alloy::cuda::merge_with(alloy::merge_policy(alloy::task_vector_merge::ties()), gpu,
//                           alloy::merge_inputs{name, base, models, parameters}, output);
//
// Every tensor view in `in` and `output` must point to device memory of the current device. The
// work is issued on the backend's stream; selections and reductions wait for it, elementwise
// work does not (synchronize the stream, or record an event, before reading `output`).

#include "alloy/core/tensor_view.hpp"
#include "alloy/cuda/backend.hpp"
#include "alloy/merge/merge_inputs.hpp"
#include "alloy/merge/registry.hpp"

namespace alloy::cuda {

void merge_with(const merge_policy& policy, const backend& gpu, const merge_inputs& in, tensor_view output);

// The mask of rank positions [first, last) by magnitude, largest first, equal magnitudes by index:
// of |x| for one input {x}, of |m - b| for two inputs {b, m} (TIES's trim). The same bits as
// alloy::rank_band_mask on the CPU.
device_mask magnitude_band_mask(const backend& gpu, std::span<const const_tensor_view> inputs, std::size_t first,
                                std::size_t last);

}  // namespace alloy::cuda
