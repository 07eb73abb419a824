#pragma once
// Element-wise map over k input tensors into one output: the one loop every merge policy runs.
//
// Inputs of any mergeable dtype are converted block by block into f32 scratch (a cache-resident
// block of 512 elements per input), the kernel computes in f32 from those values, and the
// result is rounded once into the output dtype. The kernel is a small ALLOY_HD function object:
//
//   float operator()(const float* values, std::size_t index) const
//
// where values[i] is input i at element `index` (the flat row-major position, which random
// policies use as a counter). The same kernel object runs unchanged in the CUDA backend.

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/half.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/cpu_backend.hpp"

namespace alloy {
namespace detail {

inline constexpr std::size_t block_elements = 512;

// Converts `count` elements starting at `first` into f32. One branch per block, then a loop the
// compiler vectorises (memcpy for f32, a shift for bf16).
inline void load_block(const_tensor_view view, std::size_t first, std::size_t count, float* out) {
  const std::byte* data = view.data();
  switch (view.dtype()) {
    case dtype::f32:
      std::memcpy(out, data + first * 4, count * 4);
      return;
    case dtype::bf16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, data + (first + i) * 2, 2);
        out[i] = bf16_bits_to_f32(bits);
      }
      return;
    case dtype::f16:
      for (std::size_t i = 0; i < count; ++i) {
        std::uint16_t bits;
        std::memcpy(&bits, data + (first + i) * 2, 2);
        out[i] = f16_bits_to_f32(bits);
      }
      return;
    default:
      fail(error_code::dtype_mismatch, "cannot compute on a tensor of dtype ", view.dtype());
  }
}

inline void store_block(tensor_view view, std::size_t first, std::size_t count, const float* in) {
  std::byte* data = view.data();
  switch (view.dtype()) {
    case dtype::f32:
      std::memcpy(data + first * 4, in, count * 4);
      return;
    case dtype::bf16:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t bits = f32_to_bf16_bits(in[i]);
        std::memcpy(data + (first + i) * 2, &bits, 2);
      }
      return;
    case dtype::f16:
      for (std::size_t i = 0; i < count; ++i) {
        const std::uint16_t bits = f32_to_f16_bits(in[i]);
        std::memcpy(data + (first + i) * 2, &bits, 2);
      }
      return;
    default:
      fail(error_code::dtype_mismatch, "cannot write results into a tensor of dtype ", view.dtype());
  }
}

inline void check_computable(const_tensor_view view, std::string_view role) {
  if (!is_mergeable(view.dtype())) {
    fail(error_code::dtype_mismatch, role, " has dtype ", view.dtype(),
         "; alloy computes on F32, F16 and BF16 only");
  }
}

}  // namespace detail

// Block-wise traversal of k inputs in f32: calls visit(values, index) for every element, with
// values[i] = input i at that element, and visits chunks in parallel. `Visitor` is created per
// chunk by `make_visitor(chunk_index)` so that reductions can keep per-chunk state.
template <class MakeVisitor>
void for_each_element(const cpu_backend& backend, std::span<const const_tensor_view> inputs,
                      std::size_t elements, MakeVisitor&& make_visitor) {
  for (const auto& input : inputs) {
    detail::check_computable(input, "an input tensor");
    if (input.numel() != elements) {
      detail::fail(error_code::shape_mismatch, "input of shape ", input.shape(), " has ",
                   input.numel(), " elements, expected ", elements);
    }
  }
  const std::size_t k = inputs.size();
  for_each_chunk(backend, elements, [&](std::size_t chunk, std::size_t begin, std::size_t end) {
    auto visit = make_visitor(chunk);
    std::vector<float> columns(k * detail::block_elements);
    std::vector<float> values(k == 0 ? 1 : k);
    for (std::size_t block = begin; block < end; block += detail::block_elements) {
      const std::size_t count = std::min(detail::block_elements, end - block);
      for (std::size_t i = 0; i < k; ++i) {
        detail::load_block(inputs[i], block, count, columns.data() + i * detail::block_elements);
      }
      for (std::size_t j = 0; j < count; ++j) {
        for (std::size_t i = 0; i < k; ++i) values[i] = columns[i * detail::block_elements + j];
        visit(static_cast<const float*>(values.data()), block + j);
      }
    }
  });
}

// output[index] = kernel(values, index) for every element, rounded once into output's dtype.
template <class Kernel>
void elementwise(const cpu_backend& backend, tensor_view output,
                 std::span<const const_tensor_view> inputs, const Kernel& kernel) {
  detail::check_computable(output, "the output tensor");
  for (const auto& input : inputs) {
    if (input.numel() != output.numel()) {
      detail::fail(error_code::shape_mismatch, "input of shape ", input.shape(),
                   " does not match the output's shape ", output.shape());
    }
    if (input.data() != nullptr && input.data() == output.data() && input.dtype() != output.dtype()) {
      detail::fail(error_code::invalid_argument, "an input aliases the output with another dtype");
    }
  }
  const std::size_t k = inputs.size();
  for (const auto& input : inputs) detail::check_computable(input, "an input tensor");
  for_each_chunk(backend, output.numel(), [&](std::size_t, std::size_t begin, std::size_t end) {
    std::vector<float> columns(k * detail::block_elements);
    std::vector<float> values(k == 0 ? 1 : k);
    float results[detail::block_elements];
    for (std::size_t block = begin; block < end; block += detail::block_elements) {
      const std::size_t count = std::min(detail::block_elements, end - block);
      for (std::size_t i = 0; i < k; ++i) {
        detail::load_block(inputs[i], block, count, columns.data() + i * detail::block_elements);
      }
      for (std::size_t j = 0; j < count; ++j) {
        for (std::size_t i = 0; i < k; ++i) values[i] = columns[i * detail::block_elements + j];
        results[j] = kernel(static_cast<const float*>(values.data()), block + j);
      }
      detail::store_block(output, block, count, results);
    }
  });
}

}  // namespace alloy
