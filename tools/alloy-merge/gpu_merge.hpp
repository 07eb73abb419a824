#pragma once
// alloy-merge --device cuda: the same merge with the policies on the GPU, streamed tensor by tensor.
//
// Two slots alternate. While the GPU merges tensor t (its inputs uploaded on a copy stream, the
// merge and the download of the result on the compute stream), the host copies tensor t + 1's
// inputs from the memory-mapped files into the other slot's pinned buffer and writes tensor
// t - 1's result. Peak memory: two tensors' inputs and results in pinned host memory and on the
// GPU. Integer and boolean buffers are copied on the host, as on the CPU.

#if !defined(ALLOY_HAVE_CUDA_BACKEND)
#error "gpu_merge.hpp needs alloy's CUDA backend (link alloy::cuda)"
#endif

#include <cstddef>
#include <cstring>
#include <optional>
#include <vector>

#include "alloy/cuda.hpp"
#include "merge_job.hpp"

namespace alloy::tools {
namespace detail {

inline constexpr std::size_t device_alignment = 256;

inline std::size_t aligned_size(std::size_t bytes) {
  return (bytes + device_alignment - 1) / device_alignment * device_alignment;
}

// One tensor in flight: its inputs in pinned host memory and on the GPU, its result on the GPU
// and back in pinned host memory.
struct gpu_slot {
  cuda::pinned_buffer<std::byte> host_inputs;
  cuda::device_buffer<std::byte> device_inputs;
  cuda::device_buffer<std::byte> device_output;
  cuda::pinned_buffer<std::byte> host_output;
  cuda::event uploaded;
  cuda::event done;
  std::optional<tensor_view> result;  // host view of the finished tensor
};

// Grows a buffer to at least `bytes` (the slot is idle when this is called).
template <class Buffer, class... Stream>
void reserve(Buffer& buffer, std::size_t bytes, Stream... stream) {
  if (buffer.size() < bytes) buffer = Buffer(std::max(bytes, buffer.size() + buffer.size() / 2), stream...);
}

}  // namespace detail

// Merges and writes as run_merge does, with the merge itself on the current CUDA device.
inline void run_merge_on_gpu(const merge_job& job, const cpu_backend& host, const write_options& options) {
  std::optional<model_writer> writer;
  detail::open_writer(writer, job, options);
  const cuda::backend gpu = cuda::backend::with_own_stream();
  const cuda::backend copier = cuda::backend::with_own_stream();
  detail::gpu_slot slots[2];
  std::vector<const_tensor_view> views;
  std::size_t written = 0;

  const auto submit = [&](std::size_t index) {
    const planned_tensor& tensor = job.tensors[index];
    detail::gpu_slot& slot = slots[index % 2];
    slot.uploaded.synchronize();  // the host may refill the pinned inputs
    slot.done.synchronize();      // the GPU buffers and the pinned result are free
    const std::size_t output_bytes = tensor.dims.numel() * size_of(tensor.output_dtype);
    in_stage(failure_kind::input, [&] {
      const std::optional<const_tensor_view> base_view = detail::gather_views(job, tensor, views);
      if (options.check_finite) detail::require_finite_inputs(job, host, tensor, base_view, views);
      detail::reserve(slot.host_output, output_bytes);
      const tensor_view host_output(slot.host_output.data(), tensor.output_dtype, tensor.dims);
      if (!tensor.merged) {
        merge_model_tensor(job.recipe, host, tensor.name, tensor.depth, base_view, views, host_output);
        slot.result = host_output;
        return;
      }
      // Inputs side by side in one pinned buffer, each at an aligned offset, then one upload.
      std::vector<const_tensor_view> inputs;
      if (base_view) inputs.push_back(*base_view);
      for (const auto& view : views) inputs.push_back(view);
      std::vector<std::size_t> offsets;
      std::size_t total = 0;
      for (const auto& input : inputs) {
        offsets.push_back(total);
        total += detail::aligned_size(input.byte_size());
      }
      const bool grow = slot.host_inputs.size() < total || slot.device_inputs.size() < total ||
                        slot.device_output.size() < output_bytes;
      detail::reserve(slot.host_inputs, total);
      detail::reserve(slot.device_inputs, total, gpu.stream());
      detail::reserve(slot.device_output, output_bytes, gpu.stream());
      if (grow) gpu.synchronize();  // new allocations are ready before the copy stream uses them
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        const auto* source = inputs[i].data();
        std::byte* target = slot.host_inputs.data() + offsets[i];
        // Reading the mapped pages is the host's part of the work: spread it over the threads.
        for_each_chunk(host, inputs[i].byte_size(), [&](std::size_t, std::size_t begin, std::size_t end) {
          std::memcpy(target + begin, source + begin, end - begin);
        });
      }
      cuda::check(cudaMemcpyAsync(slot.device_inputs.data(), slot.host_inputs.data(), total, cudaMemcpyHostToDevice,
                                  copier.stream()),
                  "copying tensor '" + tensor.name + "' to the GPU");
      slot.uploaded.record(copier.stream());
      slot.uploaded.wait_in(gpu.stream());
      std::vector<const_tensor_view> device_views;
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        device_views.emplace_back(slot.device_inputs.data() + offsets[i], inputs[i].dtype(), inputs[i].shape());
      }
      const std::optional<const_tensor_view> device_base =
          base_view ? std::optional<const_tensor_view>(device_views.front()) : std::nullopt;
      const std::span<const const_tensor_view> device_models(device_views.data() + (base_view ? 1 : 0), views.size());
      const tensor_view device_output(slot.device_output.data(), tensor.output_dtype, tensor.dims);
      const resolved_merge resolved = resolve_merge(job.recipe, tensor.name, tensor.depth, views.size());
      cuda::merge_with(resolved.policy, gpu, merge_inputs{tensor.name, device_base, device_models, resolved.per_model},
                       device_output);
      cuda::check(cudaMemcpyAsync(slot.host_output.data(), slot.device_output.data(), output_bytes,
                                  cudaMemcpyDeviceToHost, gpu.stream()),
                  "copying merged tensor '" + tensor.name + "' from the GPU");
      slot.done.record(gpu.stream());
      slot.result = host_output;
    });
    for (const auto& input : job.inputs) input->release(tensor.name);
  };

  const auto collect = [&](std::size_t index) {
    const planned_tensor& tensor = job.tensors[index];
    detail::gpu_slot& slot = slots[index % 2];
    in_stage(failure_kind::input, [&] {
      slot.done.synchronize();
      if (options.check_finite) detail::require_finite_output(host, *slot.result, tensor);
    });
    in_stage(failure_kind::output, [&] { writer->write(tensor.name, *slot.result); });
    written += slot.result->byte_size();
    slot.result.reset();
    if (options.progress) options.progress(index + 1, written);
  };

  for (std::size_t index = 0; index < job.tensors.size(); ++index) {
    submit(index);
    if (index > 0) collect(index - 1);
  }
  if (!job.tensors.empty()) collect(job.tensors.size() - 1);
  gpu.synchronize();
  detail::finish_output(job, *writer);
}

}  // namespace alloy::tools
