#pragma once
// Merging checkpoints into a torch module's own parameters, with any of alloy's merge methods.
//
// CPU modules are merged in place, zero-copy (alloy::merge_stores_into over a tensor_store). CUDA
// modules are merged in place on the GPU by alloy's CUDA backend, on torch's current stream, when
// alloy was built with it and LibTorch has CUDA (ALLOY_TORCH_CUDA): inputs already on the GPU (a
// tensor_store with_device_views()) are read where they are, host inputs are copied over one
// tensor at a time. Anything else (a non-contiguous module, or no CUDA backend) is staged through
// host memory: copied out, merged by the CPU backend, and written back.

#include <torch/torch.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "alloy/merge/merge_recipe.hpp"
#include "alloy/torch/tensor_store.hpp"
#include "alloy/torch/transfer.hpp"

#if defined(ALLOY_TORCH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "alloy/cuda.hpp"
#endif

namespace alloy::torch_adapter {

// True when every parameter (and buffer) of the module can be viewed in place by alloy.
inline bool viewable_in_place(const ::torch::nn::Module& module) {
  for (const auto& [name, tensor] : named_tensors(module, /*include_buffers=*/true)) {
    if (!tensor.device().is_cpu() || !tensor.is_contiguous()) return false;
  }
  return true;
}

// Which path merge_into took.
enum class merge_route : std::uint8_t {
  cpu_in_place,  // CPU module, merged where it is
  cuda_in_place,  // CUDA module, merged where it is by alloy's CUDA backend
  staged,        // copied to host memory, merged on the CPU, copied back
};

#if defined(ALLOY_TORCH_CUDA)
namespace detail {

// True when every tensor of the module is a contiguous CUDA tensor on one device.
inline std::optional<::torch::Device> single_cuda_device(const ::torch::nn::Module& module) {
  std::optional<::torch::Device> device;
  for (const auto& [name, tensor] : named_tensors(module, /*include_buffers=*/true)) {
    if (!tensor.device().is_cuda() || !tensor.is_contiguous() || (device && tensor.device() != *device)) return std::nullopt;
    device = tensor.device();
  }
  return device;
}

// A tensor's bytes on the host (device views are copied back), for comparing integer buffers.
inline std::vector<std::byte> host_bytes(const cuda::backend& gpu, const_tensor_view view) {
  std::vector<std::byte> bytes(view.byte_size());
  if (bytes.empty()) return bytes;
  if (cuda::is_device_pointer(view.data())) {
    cuda::check(cudaMemcpyAsync(bytes.data(), view.data(), bytes.size(), cudaMemcpyDeviceToHost, gpu.stream()),
                "copying a tensor to the host");
    gpu.synchronize();
  } else {
    std::memcpy(bytes.data(), view.data(), bytes.size());
  }
  return bytes;
}

// Merges into the module's CUDA tensors in place on torch's current stream.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
void merge_on_gpu(::torch::nn::Module& module, ::torch::Device device, const merge_recipe& recipe, const Base* base,
                  std::span<const Model, Extent> models) {
  recipe.validate();
  const method_definition& def = find_merge_method(recipe.method);
  if (def.needs_base && base == nullptr) alloy::detail::fail(error_code::invalid_argument, recipe.method, " needs a base model");
  if (models.empty()) alloy::detail::fail(error_code::invalid_argument, recipe.method, ": no models to merge");
  const c10::cuda::CUDAGuard guard(device);
  const cuda::backend gpu(c10::cuda::getCurrentCUDAStream(device.index()).stream());
  std::map<std::string, ::torch::Tensor, std::less<>> targets;
  for (auto& [name, tensor] : named_tensors(module, /*include_buffers=*/true)) targets.emplace(name, tensor);
  const auto& names = base != nullptr ? base->names() : models.front().names();
  const std::size_t layers = count_layers(names);
  for (const auto& name : names) {
    const auto target = targets.find(name);
    if (target == targets.end()) {
      alloy::detail::fail(error_code::not_found, recipe.method, ": the module has no tensor ", alloy::detail::quoted{name});
    }
    const tensor_view output(static_cast<std::byte*>(target->second.data_ptr()), *dtype_of(target->second),
                             shape_of(target->second));
    // Host inputs are copied to the GPU; the copies are freed in stream order after the merge.
    std::vector<cuda::device_buffer<std::byte>> uploads;
    const auto on_device = [&](const_tensor_view view) {
      if (view.byte_size() == 0 || cuda::is_device_pointer(view.data())) return view;
      auto& copy = uploads.emplace_back(view.byte_size(), gpu.stream());
      cuda::check(cudaMemcpyAsync(copy.data(), view.data(), view.byte_size(), cudaMemcpyHostToDevice, gpu.stream()),
                  "copying tensor '" + std::string(name) + "' to the GPU");
      return const_tensor_view(copy.data(), view.dtype(), view.shape());
    };
    std::vector<const_tensor_view> views;
    for (std::size_t i = 0; i < models.size(); ++i) {
      const auto found = models[i].find(name);
      if (!found) {
        alloy::detail::fail(error_code::not_found, recipe.method, ": tensor ", alloy::detail::quoted{name},
                            " is missing from model ", i);
      }
      views.push_back(*found);
    }
    std::optional<const_tensor_view> base_view;
    if (base != nullptr) base_view = base->view(name);
    const const_tensor_view reference = base_view ? *base_view : views.front();
    for (const auto& view : views) {
      if (!(view.shape() == output.shape()) || !(reference.shape() == output.shape())) {
        alloy::detail::fail(error_code::shape_mismatch, recipe.method, ": tensor ", alloy::detail::quoted{name},
                            " has shape ", view.shape(), " in a model and ", output.shape(), " in the module");
      }
    }
    if (!is_mergeable(reference.dtype())) {
      // Integer and boolean buffers are copied when every model agrees, as merge_stores_into does.
      const std::vector<std::byte> want = host_bytes(gpu, reference);
      for (std::size_t i = 0; i < views.size(); ++i) {
        if (views[i].dtype() != reference.dtype() || host_bytes(gpu, views[i]) != want) {
          alloy::detail::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", alloy::detail::quoted{name},
                              " of dtype ", reference.dtype(), " cannot be merged and differs in model ", i);
        }
      }
      if (output.dtype() != reference.dtype()) {
        alloy::detail::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", alloy::detail::quoted{name}, " is ",
                            reference.dtype(), " in the models but ", output.dtype(), " in the module");
      }
      cuda::check(cudaMemcpyAsync(output.data(), want.data(), want.size(), cudaMemcpyHostToDevice, gpu.stream()),
                  "copying tensor '" + std::string(name) + "' to the GPU");
      gpu.synchronize();
      continue;
    }
    for (auto& view : views) view = on_device(view);
    if (base_view) base_view = on_device(*base_view);
    const resolved_merge resolved = resolve_merge(recipe, name, layer_depth(name, layers), models.size());
    cuda::merge_with(resolved.policy, gpu,
                     merge_inputs{name, def.needs_base ? base_view : std::nullopt, views, resolved.per_model}, output);
  }
}

}  // namespace detail
#endif

// Merges `models` (and `base`, for methods that need one) into the module's parameters (and
// buffers) of the same names, converting to their dtypes. See alloy::merge_stores_into. Returns
// the path taken (see the top of this file).
template <parameter_store Base, parameter_store Model, std::size_t Extent>
merge_route merge_into(::torch::nn::Module& module, const merge_recipe& recipe, const cpu_backend& backend,
                       const Base* base, std::span<const Model, Extent> models) {
  if (viewable_in_place(module)) {
    tensor_store output = tensor_store::from_module(module, /*include_buffers=*/true);
    merge_stores_into(recipe, backend, base, models, output);
    return merge_route::cpu_in_place;
  }
#if defined(ALLOY_TORCH_CUDA)
  if (const auto device = detail::single_cuda_device(module)) {
    detail::merge_on_gpu(module, *device, recipe, base, models);
    return merge_route::cuda_in_place;
  }
#endif
  memory_store staged = snapshot(module, /*include_buffers=*/true);
  merge_stores_into(recipe, backend, base, models, staged);
  assign(module, staged);
  return merge_route::staged;
}

}  // namespace alloy::torch_adapter
