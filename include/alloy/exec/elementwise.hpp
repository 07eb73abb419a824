#pragma once
// Element-wise map over k input tensors into one output: the one loop every merge policy runs.
//
// Inputs of any mergeable dtype are read block by block as f32 (f32 inputs where they are, f16 and
// bf16 converted into a cache-resident scratch block of 512 elements per input, with the widest
// instructions the CPU has: block_convert.hpp), the kernel
// computes in f32 from those values, and the result is rounded once into the output dtype. The
// kernel is a small ALLOY_HD function object:
//
//   template <class Values> float operator()(const Values& values, std::size_t index) const
//
// where values[i] is input i at element `index` (the flat row-major position, which random
// policies use as a counter). Values is whatever the backend indexes cheaply (column pointers
// into the CPU backend's block, registers on a GPU); the same kernel runs unchanged on both.
//
// A kernel whose per-element form does not vectorise well (a bit or a hash decides per element
// what enters the arithmetic, or many inputs are read at once) may also give the CPU backend a
// block form, as Eigen's functors give a packet form beside the scalar one:
//
//   void evaluate_block(const float* const* columns, std::size_t inputs, std::size_t count,
//                       std::size_t first, float* results) const
//
// with columns[i] (i < inputs) pointing at `count` f32 values of input i for elements
// [first, first + count), first a multiple of 64. It must compute exactly what operator()
// computes, operation for operation; the CPU backend then calls it for every block.
//
// Both loops are compiled once per dispatch level (cpu_features.hpp: the kernel inlined into a
// function for AVX2 or AVX-512) and run at the level the CPU has; the arithmetic is the same
// IEEE operations in the same order at every level, so the bits are too.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "alloy/core/dtype.hpp"
#include "alloy/core/error.hpp"
#include "alloy/core/half.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/exec/block_convert.hpp"
#include "alloy/exec/cpu_backend.hpp"

namespace alloy {
namespace detail {

inline constexpr std::size_t block_elements = 512;

// The first 64-byte boundary at or after `p` (a buffer with 15 floats to spare).
inline float* cache_line_aligned(float* p) noexcept {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  return p + ((64 - address % 64) % 64) / sizeof(float);
}

// Converts `count` elements starting at `first` into f32: a copy for f32, the widest conversion
// loop the CPU has for f16 and bf16 (block_convert.hpp; the same bits at every level).
inline void load_block(const_tensor_view view, std::size_t first, std::size_t count, float* out) {
  const std::byte* data = view.data();
  switch (view.dtype()) {
    case dtype::f32:
      std::memcpy(out, data + first * 4, count * 4);
      return;
    case dtype::bf16:
      bf16_to_f32(data + first * 2, out, count);
      return;
    case dtype::f16:
      f16_to_f32(data + first * 2, out, count);
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
      f32_to_bf16(in, data + first * 2, count);
      return;
    case dtype::f16:
      f32_to_f16(in, data + first * 2, count);
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

// Every input computable and of `elements` elements: what each backend's primitives check first.
inline void check_inputs(std::span<const const_tensor_view> inputs, std::size_t elements) {
  for (const auto& input : inputs) {
    check_computable(input, "an input tensor");
    if (input.numel() != elements) {
      fail(error_code::shape_mismatch, "input of shape ", input.shape(), " has ", input.numel(), " elements, expected ",
           elements);
    }
  }
}

}  // namespace detail

// Block-wise traversal of k inputs in f32, chunks in parallel. For each chunk, make_visitor(chunk)
// creates a visitor (so reductions keep per-chunk state); the visitor is called as
// visit(columns, count, first) with columns[i] pointing at `count` f32 values of input i, for
// elements [first, first + count): into the input itself when it is (aligned) f32, else into a
// converted copy. Loops over a block vectorise; nothing is called per element.
template <class MakeVisitor>
void for_each_block(const cpu_backend& backend, std::span<const const_tensor_view> inputs, std::size_t elements,
                    MakeVisitor&& make_visitor) {
  detail::check_inputs(inputs, elements);
  const std::size_t k = inputs.size();
  for_each_chunk(backend, elements, [&](std::size_t chunk, std::size_t begin, std::size_t end) {
    auto visit = make_visitor(chunk);
    // Converted blocks start on a cache line: AVX-512 loads that straddle two lines cost twice.
    std::vector<float> storage(k * detail::block_elements + 16);
    float* const converted_blocks = detail::cache_line_aligned(storage.data());
    std::vector<const float*> columns(k == 0 ? 1 : k);
    for (std::size_t block = begin; block < end; block += detail::block_elements) {
      const std::size_t count = std::min(detail::block_elements, end - block);
      for (std::size_t i = 0; i < k; ++i) {
        const std::byte* data = inputs[i].data();
        if (inputs[i].dtype() == dtype::f32 && reinterpret_cast<std::uintptr_t>(data) % alignof(float) == 0) {
          columns[i] = reinterpret_cast<const float*>(data) + block;  // read in place: no copy
        } else {
          float* converted = converted_blocks + i * detail::block_elements;
          detail::load_block(inputs[i], block, count, converted);
          columns[i] = converted;
        }
      }
      visit(static_cast<const float* const*>(columns.data()), count, block);
    }
  });
}

namespace detail {
// Input i at element j of a block: what a kernel's values[i] reads, without gathering.
// size() is the number of inputs; kernels loop to it.
struct block_values {
  const float* const* columns;
  std::size_t j;
  std::size_t count;
  ALLOY_HD float operator[](std::size_t input) const { return columns[input][j]; }
  [[nodiscard]] ALLOY_HD std::size_t size() const { return count; }
};
// The same with the input count known at compile time, so that a kernel's loop over inputs
// unrolls and the loop over elements vectorises.
template <std::size_t Count>
struct fixed_block_values {
  const float* const* columns;
  std::size_t j;
  ALLOY_HD float operator[](std::size_t input) const { return columns[input][j]; }
  [[nodiscard]] ALLOY_HD static constexpr std::size_t size() { return Count; }
};

// Calls body(std::integral_constant<std::size_t, n>{}) when 1 <= n <= Max and returns true;
// returns false otherwise. Turns a run-time count into a compile-time one, so that loops over
// inputs unroll.
template <std::size_t Max, class Body>
bool with_fixed_count(std::size_t n, Body&& body) {
  return [&]<std::size_t... I>(std::index_sequence<I...>) {
    return ((n == I + 1 ? (body(std::integral_constant<std::size_t, I + 1>{}), true) : false) || ...);
  }(std::make_index_sequence<Max>{});
}

template <class Kernel, class MakeValues>
void elementwise_blocks(const cpu_backend& backend, tensor_view output, std::span<const const_tensor_view> inputs,
                        const Kernel& kernel, const MakeValues& make_values) {
  for_each_block(backend, inputs, output.numel(), [&](std::size_t) {
    return [&](const float* const* columns, std::size_t count, std::size_t first) {
      alignas(64) float results[block_elements];
      at_active_simd_level([&] {
        for (std::size_t j = 0; j < count; ++j) results[j] = kernel(make_values(columns, j), first + j);
      });
      store_block(output, first, count, results);
    };
  });
}
}  // namespace detail

// output[index] = kernel(values, index) for every element, rounded once into output's dtype.
template <class Kernel>
void elementwise(const cpu_backend& backend, tensor_view output,
                 std::span<const const_tensor_view> inputs, const Kernel& kernel) {
  // Inputs are checked by for_each_block. Writing a block happens after reading it, so the output
  // may be one of the inputs, provided it has the same dtype.
  detail::check_computable(output, "the output tensor");
  for (const auto& input : inputs) {
    if (input.data() != nullptr && input.data() == output.data() && input.dtype() != output.dtype()) {
      detail::fail(error_code::invalid_argument, "an input aliases the output with another dtype");
    }
  }
  const std::size_t k = inputs.size();
  if constexpr (requires(const float* const* columns, float* results) {
                  kernel.evaluate_block(columns, std::size_t{}, std::size_t{}, std::size_t{}, results);
                }) {
    for_each_block(backend, inputs, output.numel(), [&](std::size_t) {
      return [&](const float* const* columns, std::size_t count, std::size_t first) {
        alignas(64) float results[detail::block_elements];
        detail::at_active_simd_level([&] { kernel.evaluate_block(columns, k, count, first, results); });
        detail::store_block(output, first, count, results);
      };
    });
    return;
  }
  const auto run = [&]<std::size_t Count>(std::integral_constant<std::size_t, Count>) {
    detail::elementwise_blocks(backend, output, inputs, kernel,
                               [](const float* const* columns, std::size_t j) {
                                 return detail::fixed_block_values<Count>{columns, j};
                               });
  };
  // The input count fixed at compile time for up to 8 models and a base (each count compiles
  // the kernel once more); beyond, it is a run-time value.
  if (!detail::with_fixed_count<9>(k, run)) {
    detail::elementwise_blocks(backend, output, inputs, kernel, [k](const float* const* columns, std::size_t j) {
      return detail::block_values{columns, j, k};
    });
  }
}

}  // namespace alloy
