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

// The executor's source and sink for a merge on the GPU, as one object because they share two
// slots: read(t) waits for slot t % 2 to be free (tensor t - 2 written), copies t's inputs from the
// mapped files into the slot's pinned buffer and uploads them on the copy stream; the executor
// merges on the compute stream; commit(t) queues the download of t and then writes t - 1, so that
// the host reads t + 1 while the GPU works on t.
class gpu_pipeline {
 public:
  gpu_pipeline(const merge_job& job, const cpu_backend& host, const write_options& options, model_writer& writer)
      : job_(&job), host_(&host), options_(&options), writer_(&writer), inputs_(job, host, options.check_finite),
        gpu_(cuda::backend::with_own_stream()), copier_(cuda::backend::with_own_stream()) {}

  [[nodiscard]] const cuda::backend& device() const noexcept { return gpu_; }

  // Source. Copies are compared and written on the host, from the mapped files.
  void read_host(const planned_tensor& tensor, tensor_inputs& out) { inputs_.read(tensor, out); }
  void read(const planned_tensor& tensor, tensor_inputs& out) {
    detail::gpu_slot& slot = free_slot(tensor);
    inputs_.read(tensor, host_views_);
    in_stage(failure_kind::input, [&] {
      // Inputs side by side in one pinned buffer, each at an aligned offset, then one upload.
      std::vector<const_tensor_view> all;
      if (host_views_.base) all.push_back(*host_views_.base);
      all.insert(all.end(), host_views_.models.begin(), host_views_.models.end());
      std::vector<std::size_t> offsets;
      std::size_t total = 0;
      for (const auto& input : all) {
        offsets.push_back(total);
        total += detail::aligned_size(input.byte_size());
      }
      const std::size_t output_bytes = tensor.output_bytes();
      const bool grow = slot.host_inputs.size() < total || slot.device_inputs.size() < total ||
                        slot.device_output.size() < output_bytes;
      detail::reserve(slot.host_inputs, total);
      detail::reserve(slot.device_inputs, total, gpu_.stream());
      detail::reserve(slot.device_output, output_bytes, gpu_.stream());
      if (grow) gpu_.synchronize();  // new allocations are ready before the copy stream uses them
      for (std::size_t i = 0; i < all.size(); ++i) {
        const auto* source = all[i].data();
        std::byte* target = slot.host_inputs.data() + offsets[i];
        // Reading the mapped pages is the host's part of the work: spread it over the threads.
        for_each_chunk(*host_, all[i].byte_size(), [&](std::size_t, std::size_t begin, std::size_t end) {
          std::memcpy(target + begin, source + begin, end - begin);
        });
      }
      cuda::check(cudaMemcpyAsync(slot.device_inputs.data(), slot.host_inputs.data(), total, cudaMemcpyHostToDevice,
                                  copier_.stream()),
                  "copying tensor '" + tensor.name + "' to the GPU");
      slot.uploaded.record(copier_.stream());
      slot.uploaded.wait_in(gpu_.stream());
      std::size_t next = 0;
      const auto on_device = [&](const_tensor_view host) {
        const std::size_t i = next++;
        return const_tensor_view(slot.device_inputs.data() + offsets[i], host.dtype(), host.shape());
      };
      out.base.reset();
      if (host_views_.base) out.base = on_device(*host_views_.base);
      out.models.clear();
      for (const auto& view : host_views_.models) out.models.push_back(on_device(view));
    });
  }
  void release(const planned_tensor& tensor) const { inputs_.release(tensor); }

  // Sink.
  tensor_view output(const planned_tensor& tensor) {
    return {slot_of(tensor).device_output.data(), tensor.output_dtype, tensor.dims};
  }
  void write_copy(const planned_tensor& tensor, const_tensor_view value) {
    detail::gpu_slot& slot = free_slot(tensor);
    detail::reserve(slot.host_output, tensor.output_bytes());
    const tensor_view host_output(slot.host_output.data(), tensor.output_dtype, tensor.dims);
    convert(value, host_output);
    slot.result = host_output;
  }
  void commit(const planned_tensor& tensor) {
    detail::gpu_slot& slot = slot_of(tensor);
    if (!slot.result) {  // merged on the GPU: bring it back
      in_stage(failure_kind::input, [&] {
        const std::size_t bytes = tensor.output_bytes();
        detail::reserve(slot.host_output, bytes);
        cuda::check(cudaMemcpyAsync(slot.host_output.data(), slot.device_output.data(), bytes, cudaMemcpyDeviceToHost,
                                    gpu_.stream()),
                    "copying merged tensor '" + tensor.name + "' from the GPU");
        slot.done.record(gpu_.stream());
        slot.result = tensor_view(slot.host_output.data(), tensor.output_dtype, tensor.dims);
      });
    }
    const std::size_t index = index_of(tensor);
    if (index > 0) collect(index - 1);
  }
  // Writes the last tensor; the GPU is idle afterwards.
  void finish() {
    if (!job_->plan.tensors.empty()) collect(job_->plan.tensors.size() - 1);
    gpu_.synchronize();
  }

 private:
  [[nodiscard]] std::size_t index_of(const planned_tensor& tensor) const {
    return static_cast<std::size_t>(&tensor - job_->plan.tensors.data());
  }
  detail::gpu_slot& slot_of(const planned_tensor& tensor) { return slots_[index_of(tensor) % 2]; }
  // The slot of `tensor`, once the tensor two before it has left it.
  detail::gpu_slot& free_slot(const planned_tensor& tensor) {
    detail::gpu_slot& slot = slot_of(tensor);
    slot.uploaded.synchronize();  // the host may refill the pinned inputs
    slot.done.synchronize();      // the GPU buffers and the pinned result are free
    slot.result.reset();
    return slot;
  }
  void collect(std::size_t index) {
    const planned_tensor& tensor = job_->plan.tensors[index];
    detail::gpu_slot& slot = slots_[index % 2];
    in_stage(failure_kind::input, [&] {
      slot.done.synchronize();
      if (options_->check_finite) detail::require_finite_output(*host_, *slot.result, tensor);
    });
    in_stage(failure_kind::output, [&] { writer_->write(tensor.name, *slot.result); });
    written_ += slot.result->byte_size();
    slot.result.reset();
    if (options_->progress) options_->progress(index + 1, written_);
  }

  const merge_job* job_;
  const cpu_backend* host_;
  const write_options* options_;
  model_writer* writer_;
  input_source inputs_;
  cuda::backend gpu_;
  cuda::backend copier_;
  detail::gpu_slot slots_[2];
  tensor_inputs host_views_;
  std::size_t written_ = 0;
};

// Merges and writes as run_merge does, with the merge itself on the current CUDA device.
inline void run_merge_on_gpu(const merge_job& job, const cpu_backend& host, const write_options& options) {
  std::optional<model_writer> writer;
  detail::open_writer(writer, job, options);
  gpu_pipeline pipeline(job, host, options, *writer);
  in_stage(failure_kind::input, [&] { execute(job.plan, pipeline.device(), pipeline, pipeline); });
  pipeline.finish();
  detail::finish_output(job, *writer);
}

}  // namespace alloy::tools
