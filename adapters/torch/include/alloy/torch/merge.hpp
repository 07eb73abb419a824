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

#include "alloy/merge/execute_plan.hpp"
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
#include "alloy/torch/cuda_backend.hpp"
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

// The executor's source for a merge on the GPU: the inputs' own views where they are already on
// the GPU, a copy uploaded in stream order where they are on the host (freed in stream order once
// the tensor is merged), and host copies of device views for the copy rule.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
class cuda_upload_source {
 public:
  cuda_upload_source(const cuda::backend& gpu, const Base* base, std::span<const Model, Extent> models)
      : gpu_(&gpu), stores_(base, models) {}

  void read(const planned_tensor& tensor, tensor_inputs& out) {
    gather_inputs(tensor, out, [&](const tensor_source& source) { return on_device(stores_.view(source), tensor.name); });
  }
  void read_host(const planned_tensor& tensor, tensor_inputs& out) {
    gather_inputs(tensor, out, [&](const tensor_source& source) {
      const const_tensor_view view = stores_.view(source);
      auto& bytes = host_copies_.emplace_back(host_bytes(*gpu_, view));
      return const_tensor_view(bytes.data(), view.dtype(), view.shape());
    });
  }
  void release(const planned_tensor&) {
    uploads_.clear();
    host_copies_.clear();
  }

 private:
  const_tensor_view on_device(const_tensor_view view, const std::string& name) {
    if (view.byte_size() == 0 || cuda::is_device_pointer(view.data())) return view;
    auto& copy = uploads_.emplace_back(view.byte_size(), gpu_->stream());
    cuda::check(cudaMemcpyAsync(copy.data(), view.data(), view.byte_size(), cudaMemcpyHostToDevice, gpu_->stream()),
                "copying tensor '" + name + "' to the GPU");
    return const_tensor_view(copy.data(), view.dtype(), view.shape());
  }

  const cuda::backend* gpu_;
  stores_source<Base, Model, Extent> stores_;
  std::vector<cuda::device_buffer<std::byte>> uploads_;
  std::vector<std::vector<std::byte>> host_copies_;
};

// The executor's sink: the module's own CUDA tensors, chosen before anything is written.
class cuda_module_sink {
 public:
  cuda_module_sink(const cuda::backend& gpu, const merge_plan& plan, std::vector<tensor_view> targets)
      : gpu_(&gpu), views_(plan, std::move(targets)) {}
  [[nodiscard]] tensor_view output(const planned_tensor& tensor) const { return views_.output(tensor); }
  void write_copy(const planned_tensor& tensor, const_tensor_view value) const {
    const tensor_view target = output(tensor);
    if (value.byte_size() == 0) return;
    cuda::check(cudaMemcpyAsync(target.data(), value.data(), value.byte_size(), cudaMemcpyHostToDevice, gpu_->stream()),
                "copying tensor '" + tensor.name + "' to the GPU");
    gpu_->synchronize();  // `value` is a host copy that the source frees after this tensor
  }

 private:
  const cuda::backend* gpu_;
  views_sink views_;
};

// Merges into the module's CUDA tensors in place on torch's current stream.
template <parameter_store Base, parameter_store Model, std::size_t Extent>
void merge_on_gpu(::torch::nn::Module& module, ::torch::Device device, const merge_recipe& recipe, const Base* base,
                  std::span<const Model, Extent> models) {
  const merge_plan plan = plan_merge(recipe, base, models);
  std::map<std::string, ::torch::Tensor, std::less<>> module_tensors;
  for (auto& [name, tensor] : named_tensors(module, /*include_buffers=*/true)) module_tensors.emplace(name, tensor);
  std::vector<tensor_view> targets;
  for (const auto& tensor : plan.tensors) {
    const auto found = module_tensors.find(tensor.name);
    if (found == module_tensors.end()) {
      alloy::fail(error_code::not_found, recipe.method, ": the module has no tensor ",
                          alloy::quoted{tensor.name});
    }
    const auto type = dtype_of(found->second);
    if (!type) {
      alloy::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", alloy::quoted{tensor.name},
                  " of the module has torch dtype ", std::string(c10::toString(found->second.scalar_type())),
                  ", which alloy does not map");
    }
    const tensor_view target(static_cast<std::byte*>(found->second.data_ptr()), *type, shape_of(found->second));
    if (!(target.shape() == tensor.dims)) {
      alloy::fail(error_code::shape_mismatch, recipe.method, ": tensor ", alloy::quoted{tensor.name},
                          " has shape ", tensor.dims, " in the models and ", target.shape(), " in the module");
    }
    if (!tensor.merged() && target.dtype() != tensor.output_dtype) {
      alloy::fail(error_code::dtype_mismatch, recipe.method, ": tensor ", alloy::quoted{tensor.name},
                          " is ", tensor.output_dtype, " in the models but ", target.dtype(), " in the module");
    }
    if (tensor.merged()) alloy::detail::check_computable(target, "the output of tensor '" + tensor.name + "'");
    targets.push_back(target);
  }
  const c10::cuda::CUDAGuard guard(device);
  const cuda::backend& gpu = current_cuda_backend(device);
  cuda_upload_source source(gpu, base, models);
  cuda_module_sink sink(gpu, plan, std::move(targets));
  execute(plan, gpu, source, sink);
  gpu.synchronize();  // host inputs (pinned ones too) may be reused as soon as this returns
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
