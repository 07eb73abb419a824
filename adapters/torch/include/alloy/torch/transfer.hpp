#pragma once
// Moving weights between torch modules and alloy stores, on any device: `snapshot` takes an owning
// CPU copy of a module's tensors (the global model G that alloy keeps between tasks), `assign`
// writes a store's tensors back into the module (the copy T that the next task starts from), and
// `from_view` is a torch tensor over an alloy view's memory, without a copy.

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"
#include "alloy/torch/tensor_store.hpp"

namespace alloy::torch_adapter {

inline ::torch::ScalarType scalar_type_of(dtype type) {
  switch (type) {
    case dtype::f64: return ::torch::kFloat64;
    case dtype::f32: return ::torch::kFloat32;
    case dtype::f16: return ::torch::kFloat16;
    case dtype::bf16: return ::torch::kBFloat16;
    case dtype::i64: return ::torch::kInt64;
    case dtype::i32: return ::torch::kInt32;
    case dtype::i16: return ::torch::kInt16;
    case dtype::i8: return ::torch::kInt8;
    case dtype::u8: return ::torch::kUInt8;
    case dtype::boolean: return ::torch::kBool;
    default: detail::fail(error_code::dtype_mismatch, "alloy dtype ", type, " has no torch dtype");
  }
}

inline std::vector<std::int64_t> sizes_of(const shape& dims) {
  return {dims.begin(), dims.end()};
}

// A CPU torch tensor over the view's memory (no copy). The memory must outlive the tensor; a view
// of const memory must only be read through it.
inline ::torch::Tensor from_view(const_tensor_view view) {
  return ::torch::from_blob(const_cast<std::byte*>(view.data()), sizes_of(view.shape()),
                            ::torch::TensorOptions().dtype(scalar_type_of(view.dtype())));
}

// An owning CPU copy of named tensors (any device, any mapped dtype, contiguous or not).
inline memory_store snapshot(const std::vector<std::pair<std::string, ::torch::Tensor>>& tensors) {
  ::torch::NoGradGuard no_grad;
  memory_store copy;
  for (const auto& [name, tensor] : tensors) {
    const auto type = dtype_of(tensor);
    if (!type) {
      alloy::fail(error_code::dtype_mismatch, "tensor ", alloy::quoted{name}, " has torch dtype ",
                          std::string(c10::toString(tensor.scalar_type())), ", which alloy does not map");
    }
    const tensor_view target = copy.insert(name, *type, shape_of(tensor));
    if (target.numel() != 0) from_view(target).copy_(tensor.detach());  // one copy, device to host if need be
  }
  return copy;
}

// An owning CPU copy of a module's parameters (and buffers, if asked), under their dotted names.
inline memory_store snapshot(const ::torch::nn::Module& module, bool include_buffers = false) {
  return snapshot(named_tensors(module, include_buffers));
}

// Writes every tensor of `source` into the module's parameter (or buffer) of the same name, on
// the module's device, converting the dtype. Tensors of the module that `source` lacks are left as
// they are (a frozen base under a LoRA store); a tensor of `source` that the module lacks, or
// whose shape differs, is an error named before anything is written.
template <parameter_store Source>
void assign(::torch::nn::Module& module, const Source& source) {
  const auto tensors = named_tensors(module, /*include_buffers=*/true);
  std::vector<std::pair<const_tensor_view, ::torch::Tensor>> pairs;
  for (const auto& name : source.names()) {
    const auto it = std::find_if(tensors.begin(), tensors.end(), [&](const auto& t) { return t.first == name; });
    if (it == tensors.end()) {
      alloy::fail(error_code::not_found, "assign: the module has no parameter or buffer named ",
                          alloy::quoted{name});
    }
    const const_tensor_view view = source.view(name);
    if (!(shape_of(it->second) == view.shape())) {
      alloy::fail(error_code::shape_mismatch, "assign: tensor ", alloy::quoted{name}, " has shape ",
                          view.shape(), " in the store but ", shape_of(it->second), " in the module");
    }
    pairs.emplace_back(view, it->second);
  }
  ::torch::NoGradGuard no_grad;
  for (auto& [view, tensor] : pairs) {
    if (view.numel() != 0) tensor.copy_(from_view(view));
  }
}

}  // namespace alloy::torch_adapter
