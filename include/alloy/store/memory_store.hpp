#pragma once
// An owning, in-memory parameter store: named tensors in insertion order, each in its own
// 64-byte-aligned, zero-initialised buffer. Copies are deep; moves keep every view valid.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "alloy/core/convert.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

class memory_store : public named_store<memory_store> {
 public:
  static constexpr std::size_t alignment = 64;  // a cache line and any SIMD width alloy uses

  memory_store() = default;
  memory_store(memory_store&&) noexcept = default;
  memory_store& operator=(memory_store&&) noexcept = default;
  ~memory_store() = default;

  memory_store(const memory_store& other) {
    for (const auto& name : other.names()) insert(name, other.view(name));
  }
  memory_store& operator=(const memory_store& other) {
    if (this != &other) *this = memory_store(other);
    return *this;
  }

  // Adds a zero-filled tensor and returns a view to fill it. Fails if the name is taken.
  tensor_view insert(std::string name, dtype type, const shape& dims) {
    const std::size_t bytes = checked_byte_size(dims.numel(), size_of(type), name);
    index_.add(std::move(name), "a memory_store");
    buffers_.push_back(allocate(bytes));
    std::memset(buffers_.back().get(), 0, bytes);
    dtypes_.push_back(type);
    shapes_.push_back(dims);
    return {buffers_.back().get(), type, dims};
  }

  // Adds a copy of `source` under `name`.
  tensor_view insert(std::string name, const_tensor_view source) {
    tensor_view target = insert(std::move(name), source.dtype(), source.shape());
    if (source.byte_size() != 0) std::memcpy(target.data(), source.data(), source.byte_size());
    return target;
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    if (auto position = index_.find(name)) return const_tensor_view(at(*position));
    return std::nullopt;
  }
  [[nodiscard]] std::optional<tensor_view> find_mutable(std::string_view name) {
    if (auto position = index_.find(name)) return at(*position);
    return std::nullopt;
  }
  [[nodiscard]] static std::string_view description() noexcept { return "a memory_store"; }

 private:
  struct aligned_delete {
    void operator()(std::byte* data) const noexcept {
      ::operator delete[](data, std::align_val_t{alignment});
    }
  };
  using buffer = std::unique_ptr<std::byte[], aligned_delete>;

  static buffer allocate(std::size_t bytes) {
    // One byte at least, so that even an empty tensor has a distinct, valid pointer.
    return buffer(static_cast<std::byte*>(
        ::operator new[](std::max<std::size_t>(bytes, 1), std::align_val_t{alignment})));
  }

  [[nodiscard]] tensor_view at(std::size_t position) const {
    return {buffers_[position].get(), dtypes_[position], shapes_[position]};
  }

  std::vector<buffer> buffers_;
  std::vector<dtype> dtypes_;
  std::vector<shape> shapes_;
};

static_assert(mutable_parameter_store<memory_store>);

// An owning copy of any store, in the source's order.
template <parameter_store S>
memory_store copy_store(const S& source) {
  memory_store copy;
  for (const auto& name : source.names()) copy.insert(std::string(name), source.view(name));
  return copy;
}

// Copies every tensor of `source` into the tensor of the same name in `target`, converting
// floating dtypes (the weights a task starts from, written into a model's own storage). Tensors of
// `target` that `source` lacks are left alone; a tensor `target` lacks, or whose shape differs, is
// an error named before anything is written.
template <mutable_parameter_store Target, parameter_store Source>
void assign(Target& target, const Source& source) {
  std::vector<std::pair<const_tensor_view, tensor_view>> pairs;
  for (const auto& name : source.names()) {
    const auto found = target.find_mutable(name);
    if (!found) detail::fail(error_code::not_found, "assign: the target has no tensor ", detail::quoted{name});
    const const_tensor_view from = source.view(name);
    if (!(found->shape() == from.shape())) {
      detail::fail(error_code::shape_mismatch, "assign: tensor ", detail::quoted{name}, " has shape ", from.shape(),
                   " in the source but ", found->shape(), " in the target");
    }
    const auto convertible = [](dtype type) { return is_mergeable(type) || type == dtype::f64; };
    if (from.dtype() != found->dtype() && !(convertible(from.dtype()) && convertible(found->dtype()))) {
      detail::fail(error_code::dtype_mismatch, "assign: tensor ", detail::quoted{name}, " is ", from.dtype(),
                   " in the source but ", found->dtype(), " in the target");
    }
    pairs.emplace_back(from, *found);
  }
  for (const auto& [from, to] : pairs) convert(from, to);
}

}  // namespace alloy
