#pragma once
// Where the CLIP example runs: `--device cpu|cuda|cuda:N`, refused with a clear message when CUDA
// is asked for and absent, and bf16 autocast on CUDA (matmuls and convolutions in bfloat16,
// reductions, softmax and layer norms in float32, weights kept in float32), as
// `torch.autocast("cuda", dtype=torch.bfloat16)` does in Python.

#include <torch/torch.h>
#include <torch/version.h>
#include <ATen/autocast_mode.h>

#include <string>

#include "alloy/core/error.hpp"

namespace alloy_clip {

inline ::torch::Device parse_device(const std::string& name) {
  ::torch::Device device(::torch::kCPU);
  try {
    device = ::torch::Device(name);
  } catch (const c10::Error&) {
    alloy::fail(alloy::error_code::invalid_argument, "unknown device ", alloy::quoted{name},
                        " (expected cpu, cuda or cuda:N)");
  }
  if (device.is_cuda() && !::torch::cuda::is_available()) {
    alloy::fail(alloy::error_code::invalid_argument, "--device ", name,
                        ": this LibTorch sees no CUDA device (a CPU-only LibTorch, or no GPU on this machine)");
  }
  if (!device.is_cuda() && !device.is_cpu()) {
    alloy::fail(alloy::error_code::invalid_argument, "device ", name, " is not supported (cpu or cuda)");
  }
  return device;
}

// bf16 autocast for the scope's lifetime when `device` is CUDA; nothing on CPU (CPU training stays
// in float32: bf16 matmuls are slower than float32 ones on most CPUs).
class autocast_scope {
 public:
  explicit autocast_scope(const ::torch::Device& device) : active_(device.is_cuda()) {
    if (!active_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    was_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    previous_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    was_enabled_ = at::autocast::is_enabled();
    previous_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
    at::autocast::increment_nesting();
  }
  ~autocast_scope() {
    if (!active_) return;
    // Leaving the outermost scope drops the casts autocast cached for this scope's weights.
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, was_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, previous_dtype_);
#else
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(previous_dtype_);
#endif
  }
  autocast_scope(const autocast_scope&) = delete;
  autocast_scope& operator=(const autocast_scope&) = delete;

 private:
  bool active_;
  bool was_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kFloat;
};

}  // namespace alloy_clip
