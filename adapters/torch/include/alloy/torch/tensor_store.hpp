#pragma once
// LibTorch tensors as an alloy parameter store, without copies: a module's named parameters (or
// any name -> tensor list) become a mutable_parameter_store whose views point at the tensors'
// own memory, so alloy's merges and PAM alignment write into the model in place.
//
// Views need contiguous CPU tensors of a dtype alloy knows; anything else is refused by name
// (call .contiguous() or .cpu() first, or take a snapshot with alloy::copy_store). The store
// holds references to the tensors (shared storage), so they outlive it safely.

#include <torch/torch.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy::torch_adapter {

inline std::optional<dtype> dtype_of(const ::torch::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case ::torch::kFloat64: return dtype::f64;
    case ::torch::kFloat32: return dtype::f32;
    case ::torch::kFloat16: return dtype::f16;
    case ::torch::kBFloat16: return dtype::bf16;
    case ::torch::kInt64: return dtype::i64;
    case ::torch::kInt32: return dtype::i32;
    case ::torch::kInt16: return dtype::i16;
    case ::torch::kInt8: return dtype::i8;
    case ::torch::kUInt8: return dtype::u8;
    case ::torch::kBool: return dtype::boolean;
    default: return std::nullopt;
  }
}

inline shape shape_of(const ::torch::Tensor& tensor) {
  std::vector<shape::extent_type> extents(tensor.sizes().begin(), tensor.sizes().end());
  return shape(std::span<const shape::extent_type>(extents));
}

// A module's parameters (recursively, with their dotted names), then its buffers if asked.
inline std::vector<std::pair<std::string, ::torch::Tensor>> named_tensors(const ::torch::nn::Module& module,
                                                                          bool include_buffers = false) {
  std::vector<std::pair<std::string, ::torch::Tensor>> tensors;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
  if (include_buffers) {
    for (const auto& item : module.named_buffers(/*recurse=*/true)) tensors.emplace_back(item.key(), item.value());
  }
  return tensors;
}

class tensor_store : public named_store<tensor_store> {
 public:
  tensor_store() = default;

  // The tensors under the given names, in that order.
  explicit tensor_store(std::vector<std::pair<std::string, ::torch::Tensor>> tensors) {
    for (auto& [name, tensor] : tensors) add(std::move(name), std::move(tensor));
  }

  // A module's parameters (recursively, with their dotted names), optionally its buffers too.
  static tensor_store from_module(const ::torch::nn::Module& module, bool include_buffers = false) {
    return tensor_store(named_tensors(module, include_buffers));
  }

  void add(std::string name, ::torch::Tensor tensor) {
    if (!tensor.defined()) detail::fail(error_code::invalid_argument, "tensor ", detail::quoted{name}, " is undefined");
    index_.add(std::move(name), "a torch tensor_store");
    tensors_.push_back(std::move(tensor));
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    return const_tensor_view(view_of(*position));
  }
  [[nodiscard]] std::optional<tensor_view> find_mutable(std::string_view name) {
    const auto position = index_.find(name);
    if (!position) return std::nullopt;
    return view_of(*position);
  }
  [[nodiscard]] static std::string_view description() noexcept { return "a torch tensor_store"; }

  // Lets views of CUDA tensors be taken: they point to device memory, which only alloy's CUDA
  // backend (alloy::cuda) may read; the CPU backend must not be given them.
  tensor_store& with_device_views() & noexcept {
    device_views_ = true;
    return *this;
  }
  tensor_store&& with_device_views() && noexcept {
    device_views_ = true;
    return std::move(*this);
  }

  // The tensor itself (for optimizer state, devices, autograd).
  [[nodiscard]] const ::torch::Tensor& tensor(std::string_view name) const {
    const auto position = index_.find(name);
    if (!position) detail::fail_missing_tensor(name, "a torch tensor_store");
    return tensors_[*position];
  }

 private:
  bool device_views_ = false;

  [[nodiscard]] tensor_view view_of(std::size_t position) const {
    const ::torch::Tensor& t = tensors_[position];
    const std::string& name = index_.names()[position];
    if (!t.device().is_cpu() && !(device_views_ && t.device().is_cuda())) {
      detail::fail(error_code::invalid_argument, "tensor ", detail::quoted{name}, " is on ", t.device().str(),
                   "; alloy's CPU backend views CPU tensors only (for the CUDA backend, call with_device_views())");
    }
    if (!t.is_contiguous()) {
      detail::fail(error_code::invalid_argument, "tensor ", detail::quoted{name},
                   " is not contiguous; views need contiguous memory (call .contiguous())");
    }
    const auto type = dtype_of(t);
    if (!type) {
      detail::fail(error_code::dtype_mismatch, "tensor ", detail::quoted{name}, " has torch dtype ",
                   std::string(c10::toString(t.scalar_type())), ", which alloy does not map");
    }
    // Parameters require grad; writing through the view is like writing under torch::NoGradGuard.
    return {static_cast<std::byte*>(t.data_ptr()), *type, shape_of(t)};
  }

  std::vector<::torch::Tensor> tensors_;
};

static_assert(mutable_parameter_store<tensor_store>);

}  // namespace alloy::torch_adapter
