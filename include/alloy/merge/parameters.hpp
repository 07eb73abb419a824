#pragma once
// Merge parameters that vary per tensor, as mergekit configs write them:
//
//   weight: 0.5                                   a scalar
//   weight: [0, 0.3, 1]                           a gradient: interpolated across layer depth
//   weight: [{filter: self_attn, value: 0.8},     conditions: the first entry whose filter is a
//            {filter: mlp, value: [0.2, 0.6]},    substring of the tensor name (or is absent or
//            {value: 0.5}]                        "*") gives the value, itself scalar or gradient
//
// A gradient is evaluated at t in [0, 1], the tensor's relative depth (see layer_depth): with
// values v_0..v_{m-1}, s = t (m - 1), result = (1 - frac(s)) v_floor(s) + frac(s) v_floor(s)+1.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "alloy/core/error.hpp"

namespace alloy {

class parameter_setting {
 public:
  struct condition {
    std::optional<std::string> filter;  // substring of the tensor name; none or "*" matches all
    std::vector<double> value;          // one value: a scalar; several: a gradient
  };

  parameter_setting() = default;
  parameter_setting(double scalar) : conditions_{{std::nullopt, {scalar}}} {}  // NOLINT: natural
  // A word, for choice parameters (consensus: count). One value for the whole merge.
  parameter_setting(std::string word) : word_(std::move(word)) {}  // NOLINT: natural
  parameter_setting(const char* word) : word_(word) {}             // NOLINT: natural
  static parameter_setting gradient(std::vector<double> values) {
    if (values.empty()) detail::fail(error_code::invalid_argument, "a gradient needs at least one value");
    parameter_setting setting;
    setting.conditions_.push_back({std::nullopt, std::move(values)});
    return setting;
  }
  static parameter_setting conditional(std::vector<condition> conditions) {
    for (const auto& c : conditions) {
      if (c.value.empty()) detail::fail(error_code::invalid_argument, "a conditional parameter has no value");
    }
    parameter_setting setting;
    setting.conditions_ = std::move(conditions);
    return setting;
  }

  // The value for `tensor_name` at relative depth t, or nothing when no condition matches.
  [[nodiscard]] std::optional<double> evaluate(std::string_view tensor_name, double t) const {
    for (const auto& c : conditions_) {
      if (!c.filter || *c.filter == "*" || tensor_name.find(*c.filter) != std::string_view::npos) {
        return interpolate(c.value, t);
      }
    }
    return std::nullopt;
  }

  [[nodiscard]] const std::vector<condition>& conditions() const noexcept { return conditions_; }
  [[nodiscard]] bool empty() const noexcept { return conditions_.empty() && !word_; }
  // The word of a choice setting, or nothing for a number.
  [[nodiscard]] const std::optional<std::string>& word() const noexcept { return word_; }

  // Every number this setting can produce (for validating ranges before a merge starts).
  [[nodiscard]] std::vector<double> all_values() const {
    std::vector<double> values;
    for (const auto& c : conditions_) values.insert(values.end(), c.value.begin(), c.value.end());
    return values;
  }

 private:
  static double interpolate(const std::vector<double>& values, double t) {
    if (values.size() == 1) return values.front();
    t = std::clamp(t, 0.0, 1.0);
    const double scaled = t * static_cast<double>(values.size() - 1);
    const auto low = static_cast<std::size_t>(scaled);
    const std::size_t high = std::min(values.size() - 1, low + 1);
    const double fraction = scaled - static_cast<double>(low);
    return (1 - fraction) * values[low] + fraction * values[high];
  }

  std::vector<condition> conditions_;
  std::optional<std::string> word_;
};

// The layer index in a tensor name: the first dot-separated component made of digits only
// ("model.layers.12.mlp.up_proj.weight" -> 12), or nothing for tensors outside the layer stack.
inline std::optional<std::size_t> layer_index(std::string_view tensor_name) {
  std::size_t start = 0;
  while (start <= tensor_name.size()) {
    const std::size_t end = std::min(tensor_name.find('.', start), tensor_name.size());
    const std::string_view part = tensor_name.substr(start, end - start);
    if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      std::size_t index = 0;
      const auto result = std::from_chars(part.data(), part.data() + part.size(), index);
      if (result.ec == std::errc()) return index;
    }
    start = end + 1;
  }
  return std::nullopt;
}

// Relative depth t in [0, 1] of a tensor, for gradients: layer i of n is at i / (n - 1).
// Tensors outside the layer stack sit at the ends, as mergekit places them: embeddings (names
// containing "embed", "wte", "wpe") at 0, everything else (final norm, output head) at 1.
inline double layer_depth(std::string_view tensor_name, std::size_t layer_count) {
  if (const auto index = layer_index(tensor_name)) {
    if (layer_count <= 1) return 0.0;
    return std::min(1.0, static_cast<double>(*index) / static_cast<double>(layer_count - 1));
  }
  for (std::string_view pre : {"embed", "wte", "wpe"}) {
    if (tensor_name.find(pre) != std::string_view::npos) return 0.0;
  }
  return 1.0;
}

// The number of layers among a model's tensor names: one more than the largest layer index.
template <class Names>
std::size_t count_layers(const Names& names) {
  std::size_t count = 0;
  for (const auto& name : names) {
    if (const auto index = layer_index(name)) count = std::max(count, *index + 1);
  }
  return count;
}

}  // namespace alloy
