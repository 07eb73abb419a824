#pragma once
// Merging checkpoints into a torch module's own parameters, with any of alloy's merge methods.
//
// CPU modules are merged in place, zero-copy (alloy::merge_stores_into over a tensor_store). A
// module with tensors alloy cannot view (on CUDA, or not contiguous) is staged through host
// memory: its parameters are copied out, merged by alloy's CPU backend, and written back, so the
// policy code stays the one alloy tests against its references, until the CUDA backend takes over.

#include <torch/torch.h>

#include <cstddef>
#include <span>

#include "alloy/merge/merge_recipe.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "alloy/torch/transfer.hpp"

namespace alloy::torch_adapter {

// True when every parameter (and buffer) of the module can be viewed in place by alloy.
inline bool viewable_in_place(const ::torch::nn::Module& module) {
  for (const auto& [name, tensor] : named_tensors(module, /*include_buffers=*/true)) {
    if (!tensor.device().is_cpu() || !tensor.is_contiguous()) return false;
  }
  return true;
}

// Merges `models` (and `base`, for methods that need one) into the module's parameters (and
// buffers) of the same names, converting to their dtypes. See alloy::merge_stores_into.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
void merge_into(::torch::nn::Module& module, const merge_recipe& recipe, const cpu_backend& backend, const Base* base,
                std::span<const Model, Extent> models) {
  if (viewable_in_place(module)) {
    tensor_store output = tensor_store::from_module(module, /*include_buffers=*/true);
    merge_stores_into(recipe, backend, base, models, output);
    return;
  }
  memory_store staged = snapshot(module, /*include_buffers=*/true);
  merge_stores_into(recipe, backend, base, models, staged);
  assign(module, staged);
}

}  // namespace alloy::torch_adapter
