#pragma once
// Alignment on the GPU from any C++ compiler: PAM's reset and the regularizers' per-tensor value
// and gradient for alloy::cuda::backend, compiled once by nvcc into the alloy::cuda library from
// the same ALLOY_HD functors the CPU runs (alloy/align). They overload the library's templates of
// the same names, so generic code (alloy::align_signs, the torch adapter) finds them by
// argument-dependent lookup. Every view and mask word pointer must be device memory of the
// current device; the work is issued on the backend's stream.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "alloy/align/pam.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/cuda/backend.hpp"

namespace alloy::cuda {

// Resets every tensor's sign conflicts with G inside its top-p mask; returns the reset masks and
// writes their counts. The counts come back in one copy after the last tensor: one wait per
// pass, not per tensor.
std::vector<device_mask> reset_sign_conflicts(const backend& gpu, std::span<const pam_tensor> tensors, pam_reset mode,
                                              std::span<std::size_t> counts);

// Writes mask bit i as byte i (0 or 1) of `bytes` (device memory of mask.size() bytes: a bool
// tensor's storage).
void expand_mask(const backend& gpu, const device_mask& mask, std::uint8_t* bytes);

// The regularizers on one tensor (see alloy/align/regularizers.hpp). Each returns the value
// (waiting for the stream) and adds the gradient into `gradient`.
double l2_pull_tensor(const backend& gpu, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                      double strength, const std::uint64_t* mask = nullptr);
double sign_agreement_tensor(const backend& gpu, const_tensor_view g, const_tensor_view t, tensor_view gradient,
                             double strength, const std::uint64_t* mask);
double cosine_alignment_tensor(const backend& gpu, const_tensor_view g, const_tensor_view t, const_tensor_view g0,
                               tensor_view gradient, double strength);

}  // namespace alloy::cuda
