#pragma once
// Small helpers to build stores and read tensors back in tests.

#include <algorithm>
#include <cstddef>
#include <random>
#include <string>
#include <vector>

#include "alloy/core/convert.hpp"
#include "alloy/store/memory_store.hpp"

namespace alloy::testing {

// Inserts `values` (given as floats) under `name`, stored in `type`; their count must be the shape's.
inline tensor_view insert_values(memory_store& store, const std::string& name, const std::vector<float>& values,
                                 shape dims, dtype type = dtype::f32) {
  if (values.size() != dims.numel()) {
    detail::fail(error_code::shape_mismatch, "insert_values: ", values.size(), " values for shape ", dims);
  }
  const tensor_view view = store.insert(name, type, dims);
  convert(const_tensor_view(std::span<const float>(values), shape{static_cast<std::int64_t>(values.size())}),
          tensor_view(view.data(), type, shape{static_cast<std::int64_t>(values.size())}));
  return view;
}

inline std::vector<float> values_of(const_tensor_view view) {
  std::vector<float> out(view.numel());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = load_as_float(view, i);
  return out;
}

// True when two views hold the same bytes (dtype and shape are the caller's to compare).
inline bool same_bytes(const_tensor_view a, const_tensor_view b) {
  const auto x = a.bytes();
  const auto y = b.bytes();
  return std::equal(x.begin(), x.end(), y.begin(), y.end());
}

inline std::vector<float> random_values(std::size_t count, unsigned seed, float spread = 1.0f) {
  std::mt19937 engine(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> values(count);
  for (auto& v : values) v = normal(engine);
  return values;
}

}  // namespace alloy::testing
