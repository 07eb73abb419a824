#pragma once
// A non-owning view of one contiguous, row-major tensor: a pointer, a dtype and a shape. Views are
// what stores hand out and what backends compute on; they never allocate or free. `tensor_view`
// may write through its pointer, `const_tensor_view` may not, and the first converts to the second.

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include "alloy/core/config.hpp"
#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/shape.hpp"

namespace alloy {

template <bool Const>
class basic_tensor_view {
 public:
  using byte_type = std::conditional_t<Const, const std::byte, std::byte>;

  basic_tensor_view() = default;

  basic_tensor_view(byte_type* data, alloy::dtype type, const alloy::shape& dims)
      : data_(data), dtype_(type), shape_(dims) {
    if (data_ == nullptr && shape_.numel() != 0) {
      detail::fail(error_code::invalid_argument, "a tensor view of shape ", shape_,
                   " needs data, got a null pointer");
    }
  }

  // A typed span as a view: dtype from T, element count checked against the shape.
  template <element_type T>
    requires(Const || !std::is_const_v<T>)
  basic_tensor_view(std::span<T> elements, const alloy::shape& dims)
      : basic_tensor_view(reinterpret_cast<byte_type*>(elements.data()), dtype_of_v<T>, dims) {
    if (elements.size() != dims.numel()) {
      detail::fail(error_code::shape_mismatch, "a span of ", elements.size(),
                   " elements cannot be viewed as shape ", dims, " (", dims.numel(), " elements)");
    }
  }

  // tensor_view -> const_tensor_view.
  template <bool OtherConst>
    requires(Const && !OtherConst)
  basic_tensor_view(const basic_tensor_view<OtherConst>& other) noexcept  // NOLINT: widening
      : data_(other.data()), dtype_(other.dtype()), shape_(other.shape()) {}

  [[nodiscard]] ALLOY_HD byte_type* data() const noexcept { return data_; }
  [[nodiscard]] ALLOY_HD alloy::dtype dtype() const noexcept { return dtype_; }
  [[nodiscard]] ALLOY_HD const alloy::shape& shape() const noexcept { return shape_; }
  [[nodiscard]] ALLOY_HD std::size_t numel() const noexcept { return shape_.numel(); }
  [[nodiscard]] ALLOY_HD std::size_t byte_size() const noexcept {
    return shape_.numel() * size_of(dtype_);
  }
  [[nodiscard]] std::span<byte_type> bytes() const noexcept { return {data_, byte_size()}; }

  // The elements as T. Fails when T is not the view's dtype, or when the data is not aligned for
  // T (a safetensors file written without alignment care can hold such tensors; read those
  // through `bytes()` or copy them into a store first).
  template <element_type T>
  [[nodiscard]] auto as() const {
    using value_type = std::conditional_t<Const, const std::remove_cv_t<T>, T>;
    if (dtype_of_v<T> != dtype_) {
      detail::fail(error_code::dtype_mismatch, "tensor of dtype ", dtype_, " accessed as ",
                   dtype_of_v<T>);
    }
    if (reinterpret_cast<std::uintptr_t>(data_) % alignof(std::remove_cv_t<T>) != 0) {
      detail::fail(error_code::invalid_argument, "tensor data of dtype ", dtype_,
                   " is not aligned to ", alignof(std::remove_cv_t<T>), " bytes");
    }
    return std::span<value_type>(reinterpret_cast<value_type*>(data_), numel());
  }

 private:
  byte_type* data_ = nullptr;
  alloy::dtype dtype_ = alloy::dtype::f32;
  alloy::shape shape_{0};  // a default view is empty, not a one-element scalar
};

using tensor_view = basic_tensor_view<false>;
using const_tensor_view = basic_tensor_view<true>;

template <element_type T>
basic_tensor_view(std::span<T>, const shape&) -> basic_tensor_view<std::is_const_v<T>>;

}  // namespace alloy
