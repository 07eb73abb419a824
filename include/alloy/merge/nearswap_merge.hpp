#pragma once
// mergekit's nearswap: per entry, the model's value where it is within t of the base's, and a
// blend that leans back to the base as they move apart. With a the base, b the model:
//   w = clamp(t / max(|a - b|, 1e-6), 0, 1),   result = w b + (1 - w) a.
// (mergekit's nearswap.py; NaN propagates as through torch's clamp.)

#include <cstddef>
#include <string_view>

#include "alloy/core/config.hpp"
#include "alloy/core/half.hpp"
#include "alloy/exec/cpu_backend.hpp"
#include "alloy/exec/elementwise.hpp"
#include "alloy/merge/merge_inputs.hpp"

namespace alloy {

namespace detail {

struct nearswap_kernel {
  float t = 0.0f;
  template <class Values>
  ALLOY_HD float operator()(const Values& values, std::size_t) const {
    const float a = values[0];
    const float b = values[1];
    // Each ternary a select on the bits (core/half.hpp): with branches the loop ran one element
    // at a time. Comparisons written so that NaN passes through each clamp, as torch.clamp lets it.
    const float distance = detail::select_bits(a > b, a - b, b - a);
    const float floor = detail::select_bits(distance < 1e-6f, 1e-6f, distance);
    const float ratio = t / floor;
    const float weight = detail::select_bits(ratio < 0.0f, 0.0f, detail::select_bits(ratio > 1.0f, 1.0f, ratio));
    return weight * b + (1.0f - weight) * a;
  }
};

}  // namespace detail

struct nearswap_merge {
  double t = 0.0;

  [[nodiscard]] static constexpr std::string_view name() noexcept { return "nearswap"; }
  [[nodiscard]] static constexpr bool needs_base() noexcept { return true; }

  template <class Backend>
  void merge(const Backend& backend, const merge_inputs& in, tensor_view output) const {
    detail::check_base_and_one_model(name(), in, output);
    detail::check_finite(name(), in.name, "t", t);
    const const_tensor_view pair[] = {*in.base, in.models[0]};
    elementwise(backend, output, pair, detail::nearswap_kernel{static_cast<float>(t)});
  }
};

}  // namespace alloy
