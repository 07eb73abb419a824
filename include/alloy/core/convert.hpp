#pragma once
// Element conversion between the floating dtypes (f64, f32, f16, bf16): every value goes through
// f32 or f64 and is rounded once, to nearest even, into the destination.

#include <cstring>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"

namespace alloy {
namespace detail {

// Loads element i of T from possibly unaligned bytes (memcpy compiles to a plain load).
template <class T>
ALLOY_ALWAYS_INLINE T load_unaligned(const std::byte* data, std::size_t index) noexcept {
  T value;
  std::memcpy(&value, data + index * sizeof(T), sizeof(T));
  return value;
}

template <class T>
ALLOY_ALWAYS_INLINE void store_unaligned(std::byte* data, std::size_t index, T value) noexcept {
  std::memcpy(data + index * sizeof(T), &value, sizeof(T));
}

template <class To, class From>
void convert_elements(const std::byte* source, std::byte* target, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    const From value = load_unaligned<From>(source, i);
    if constexpr (std::is_same_v<To, double>) {
      store_unaligned<To>(target, i, static_cast<double>(static_cast<float>(value)));
    } else {
      // f64 sources round to f32 first; that double rounding only matters for f64 -> f16/bf16.
      store_unaligned<To>(target, i, To(static_cast<float>(value)));
    }
  }
}

template <class Function>
decltype(auto) visit_floating(dtype type, Function&& function) {
  switch (type) {
    case dtype::f64: return function(double{});
    case dtype::f32: return function(float{});
    case dtype::f16: return function(float16{});
    case dtype::bf16: return function(bfloat16{});
    default:
      fail(error_code::dtype_mismatch, "dtype ", type,
           " is not one of the floating dtypes alloy converts (F64, F32, F16, BF16)");
  }
}

}  // namespace detail

// Copies `source` into `target`, converting the dtype. Shapes must hold the same element count.
inline void convert(const_tensor_view source, tensor_view target) {
  if (source.numel() != target.numel()) {
    detail::fail(error_code::shape_mismatch, "cannot convert a tensor of shape ", source.shape(),
                 " into one of shape ", target.shape());
  }
  if (source.dtype() == target.dtype()) {
    if (source.byte_size() != 0) std::memmove(target.data(), source.data(), source.byte_size());
    return;
  }
  detail::visit_floating(source.dtype(), [&](auto from) {
    detail::visit_floating(target.dtype(), [&](auto to) {
      detail::convert_elements<decltype(to), decltype(from)>(source.data(), target.data(),
                                                             source.numel());
    });
  });
}

// Element `index` of a floating tensor as float (for inspection and tests, not for hot loops).
inline float load_as_float(const_tensor_view view, std::size_t index) {
  return detail::visit_floating(view.dtype(), [&](auto tag) {
    return static_cast<float>(detail::load_unaligned<decltype(tag)>(view.data(), index));
  });
}

}  // namespace alloy
