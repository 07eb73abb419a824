// PAM and the regularizers instantiated for the CUDA backend (declared in alloy/cuda/align.hpp).

#include "alloy/align/pam.hpp"
#include "alloy/align/regularizers.hpp"
#include "alloy/cuda/align.hpp"
#include "alloy/cuda/primitives.cuh"

namespace alloy::cuda {

std::size_t count_set(const backend& b, const device_mask& mask) {
  device_buffer<unsigned long long> count(1, b.stream());
  check(cudaMemsetAsync(count.data(), 0, sizeof(unsigned long long), b.stream()), "zeroing a counter");
  detail::count_bits_async(b, mask, count.data());
  unsigned long long host = 0;
  check(cudaMemcpyAsync(&host, count.data(), sizeof host, cudaMemcpyDeviceToHost, b.stream()), "copying a count to the host");
  b.synchronize();
  return static_cast<std::size_t>(host);
}

std::vector<device_mask> reset_sign_conflicts(const backend& gpu, std::span<const pam_tensor> tensors, pam_reset mode,
                                              std::span<std::size_t> counts) {
  // The same functors as alloy::reset_sign_conflicts; the reset runs for every tensor (a no-op
  // where no bit is set) so that no count has to come back before the next tensor starts.
  device_buffer<unsigned long long> device_counts(tensors.size(), gpu.stream());
  if (!tensors.empty()) {
    check(cudaMemsetAsync(device_counts.data(), 0, tensors.size() * sizeof(unsigned long long), gpu.stream()),
          "zeroing the reset counters");
  }
  std::vector<device_mask> resets;
  resets.reserve(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const const_tensor_view inputs[] = {tensors[i].global, tensors[i].task};
    device_mask reset = select_where(gpu, inputs, tensors[i].global.numel(), alloy::detail::pam_conflict{tensors[i].top_bits});
    detail::count_bits_async(gpu, reset, device_counts.data() + i);
    elementwise(gpu, tensors[i].task, inputs,
                alloy::detail::pam_reset_kernel{reset.words(), mode == pam_reset::to_global});
    resets.push_back(std::move(reset));
  }
  std::vector<unsigned long long> host(tensors.size());
  if (!host.empty()) {
    check(cudaMemcpyAsync(host.data(), device_counts.data(), host.size() * sizeof(unsigned long long),
                          cudaMemcpyDeviceToHost, gpu.stream()),
          "copying the reset counts to the host");
  }
  gpu.synchronize();
  for (std::size_t i = 0; i < host.size(); ++i) counts[i] = static_cast<std::size_t>(host[i]);
  return resets;
}

namespace {
__global__ void expand_mask_kernel(const std::uint64_t* words, std::size_t size, std::uint8_t* bytes) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < size; i += stride) {
    bytes[i] = alloy::detail::mask_bit(words, i) ? 1 : 0;
  }
}
}  // namespace

void expand_mask(const backend& gpu, const device_mask& mask, std::uint8_t* bytes) {
  if (mask.size() == 0) return;
  expand_mask_kernel<<<detail::grid_for(gpu, mask.size()), detail::block_threads, 0, gpu.stream()>>>(mask.words(),
                                                                                                   mask.size(), bytes);
  check(cudaGetLastError(), "launching the mask expansion kernel");
}

double l2_pull_tensor(const backend& gpu, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                      double strength, const std::uint64_t* mask) {
  return alloy::l2_pull_tensor<backend>(gpu, g, t, gradient, strength, mask);
}

double sign_agreement_tensor(const backend& gpu, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                             double strength, const std::uint64_t* mask) {
  return alloy::sign_agreement_tensor<backend>(gpu, g, t, gradient, strength, mask);
}

double cosine_alignment_tensor(const backend& gpu, const_tensor_view g, const_tensor_view t, const_tensor_view g0,
                               tensor_view gradient, double strength) {
  return alloy::cosine_alignment_tensor<backend>(gpu, g, t, g0, gradient, strength);
}

}  // namespace alloy::cuda
