#pragma once
// alloy's CUDA backend on torch's current stream, for the adapter's CUDA paths (ALLOY_TORCH_CUDA
// builds; empty otherwise). One backend per (device, stream) and thread is kept, so that its
// argument ring of pinned memory is allocated once, not once per tensor of every training step.

#if defined(ALLOY_TORCH_CUDA)
#include <torch/torch.h>

#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <map>
#include <utility>

#include "alloy/cuda.hpp"

namespace alloy::torch_adapter::detail {

// The caller holds a c10::cuda::CUDAGuard for `device` (the backend reads the current device).
inline const cuda::backend& current_cuda_backend(::torch::Device device) {
  thread_local std::map<std::pair<int, cudaStream_t>, cuda::backend> backends;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(device.index()).stream();
  const std::pair<int, cudaStream_t> key{device.index(), stream};
  auto found = backends.find(key);
  if (found == backends.end()) found = backends.emplace(key, cuda::backend(stream)).first;
  return found->second;
}

}  // namespace alloy::torch_adapter::detail
#endif
