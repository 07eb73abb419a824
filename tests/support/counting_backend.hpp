#pragma once
// A second backend for the tests: the CPU backend's primitives behind another type, counting
// every call. An algorithm written against its Backend parameter runs through it and gives the
// CPU's bits; one that names cpu_backend (or calls a CPU-only helper) does not compile against
// it, and one that bypasses the primitives shows up in the counts.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/reduce.hpp"
#include "alloy/exec/select.hpp"

namespace alloy::testing {

struct primitive_calls {
  std::size_t elementwise = 0;
  std::size_t reduce_sums = 0;
  std::size_t reduce_rows = 0;
  std::size_t nth_largest = 0;
  std::size_t rank_band_mask = 0;
  std::size_t rank_sampling_mask = 0;
  std::size_t select_where = 0;
  std::size_t count_set = 0;
  std::size_t stage_arguments = 0;
};

struct counting_backend {
  using mask_type = bit_mask;
  cpu_backend cpu{};
  std::shared_ptr<primitive_calls> calls = std::make_shared<primitive_calls>();
};

template <class Kernel>
void elementwise(const counting_backend& b, tensor_view output, std::span<const const_tensor_view> inputs,
                 const Kernel& kernel) {
  ++b.calls->elementwise;
  alloy::elementwise(b.cpu, output, inputs, kernel);
}

template <class Accumulate>
std::vector<double> reduce_sums(const counting_backend& b, std::span<const const_tensor_view> inputs,
                                std::size_t elements, std::size_t terms, const Accumulate& accumulate) {
  ++b.calls->reduce_sums;
  return alloy::reduce_sums(b.cpu, inputs, elements, terms, accumulate);
}

template <class Accumulate>
std::vector<double> reduce_rows(const counting_backend& b, std::span<const const_tensor_view> inputs,
                                const tensor_rows& rows, std::size_t terms, const Accumulate& accumulate) {
  ++b.calls->reduce_rows;
  return alloy::reduce_rows(b.cpu, inputs, rows, terms, accumulate);
}

template <class Value>
float nth_largest(const counting_backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                  const Value& value, std::size_t position) {
  ++b.calls->nth_largest;
  return alloy::nth_largest(b.cpu, inputs, elements, value, position);
}

template <class Value>
std::vector<float> nth_largest_each(const counting_backend& b, std::span<const const_tensor_view> inputs,
                                   std::size_t elements, const Value& value, std::span<const std::size_t> positions) {
  ++b.calls->nth_largest;
  return alloy::nth_largest_each(b.cpu, inputs, elements, value, positions);
}

template <class Value>
bit_mask rank_band_mask(const counting_backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                        const Value& value, std::size_t first, std::size_t last) {
  ++b.calls->rank_band_mask;
  return alloy::rank_band_mask(b.cpu, inputs, elements, value, first, last);
}

template <class Value>
bit_mask rank_sampling_mask(const counting_backend& b, std::span<const const_tensor_view> inputs, std::size_t rows,
                            std::size_t row_length, const Value& value, std::uint64_t stream_key, double lowest,
                            double spread) {
  ++b.calls->rank_sampling_mask;
  return alloy::rank_sampling_mask(b.cpu, inputs, rows, row_length, value, stream_key, lowest, spread);
}

template <class Predicate>
bit_mask select_where(const counting_backend& b, std::span<const const_tensor_view> inputs, std::size_t elements,
                      const Predicate& predicate) {
  ++b.calls->select_where;
  return alloy::select_where(b.cpu, inputs, elements, predicate);
}

inline std::size_t count_set(const counting_backend& b, const bit_mask& mask) {
  ++b.calls->count_set;
  return alloy::count_set(b.cpu, mask);
}

template <class T>
const T* stage_arguments(const counting_backend& b, std::span<const T> values) {
  ++b.calls->stage_arguments;
  return alloy::stage_arguments(b.cpu, values);
}

}  // namespace alloy::testing
