#pragma once
// Merge parameters that vary per tensor, as mergekit configs write them:
//
//   weight: 0.5                                   a scalar
//   weight: [0, 0.3, 1]                           a gradient: interpolated across layer depth
//   weight: [{filter: self_attn, value: 0.8},     conditions: the first entry whose filter is a
//            {filter: mlp, value: [0.2, 0.6]},    substring of the tensor name (or is absent or
//            {value: 0.5}]                        "*") gives the value, itself scalar or gradient
//
// A gradient is evaluated at t in [0, 1], the tensor's relative depth (see layer_stacks): with
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

// Where a tensor sits in a layer stack: the first dot-separated component of its name made of
// digits only is its layer index, and the name up to it (with the dot) names its stack:
// "model.layers.12.mlp.up_proj.weight" is layer 12 of "model.layers.". Found from the names
// alone, without tables of architectures, so that every stack of a multimodal model
// ("vision_model.encoder.layers.", "text_model.encoder.layers.") is a stack of its own. Tensors
// with no such component (embeddings, final norms, output heads) lie outside every stack.
struct layer_position {
  std::string_view stack;  // a prefix of the name, ending in '.'
  std::size_t index = 0;
};

inline std::optional<layer_position> layer_position_of(std::string_view tensor_name) {
  std::size_t start = 0;
  while (start < tensor_name.size()) {
    const std::size_t end = std::min(tensor_name.find('.', start), tensor_name.size());
    const std::string_view part = tensor_name.substr(start, end - start);
    // An index is followed by more of the name: a name that ends in digits is no layer.
    if (end < tensor_name.size() && !part.empty() &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      std::size_t index = 0;
      const auto result = std::from_chars(part.data(), part.data() + part.size(), index);
      if (result.ec == std::errc()) return layer_position{tensor_name.substr(0, start), index};
    }
    start = end + 1;
  }
  return std::nullopt;
}

inline std::optional<std::size_t> layer_index(std::string_view tensor_name) {
  const auto position = layer_position_of(tensor_name);
  return position ? std::optional<std::size_t>(position->index) : std::nullopt;
}

// The layer stacks among a model's tensor names, each with its layer count (one more than its
// largest index), and every tensor's relative depth t in [0, 1] for gradients, as mergekit
// evaluates them over a whole-model merge (one slice spanning each stack, plan.py):
//   layer i of a stack of n: t = i / (n - 1), and t = 1 when the stack has one layer;
//   outside every stack (embeddings, final norm, output head): t = 0.
class layer_stacks {
 public:
  layer_stacks() = default;
  template <class Names>
  explicit layer_stacks(const Names& names) {
    for (const auto& name : names) {
      const auto position = layer_position_of(name);
      if (!position) continue;
      const auto it = find(position->stack);
      if (it == stacks_.end()) {
        stacks_.emplace_back(std::string(position->stack), position->index + 1);
      } else {
        it->second = std::max(it->second, position->index + 1);
      }
    }
  }

  // Each stack's name prefix and layer count, in the order the names first show them.
  [[nodiscard]] const std::vector<std::pair<std::string, std::size_t>>& stacks() const noexcept { return stacks_; }
  [[nodiscard]] std::size_t layer_count(std::string_view stack) const {
    const auto it = find(stack);
    return it == stacks_.end() ? 0 : it->second;
  }

  [[nodiscard]] double depth(std::string_view tensor_name) const {
    const auto position = layer_position_of(tensor_name);
    if (!position) return 0.0;
    const std::size_t count = layer_count(position->stack);
    if (count <= 1) return 1.0;
    return std::min(1.0, static_cast<double>(position->index) / static_cast<double>(count - 1));
  }

 private:
  using entries = std::vector<std::pair<std::string, std::size_t>>;  // a few at most
  [[nodiscard]] entries::const_iterator find(std::string_view stack) const {
    return std::find_if(stacks_.begin(), stacks_.end(), [&](const auto& entry) { return entry.first == stack; });
  }
  [[nodiscard]] entries::iterator find(std::string_view stack) {
    return std::find_if(stacks_.begin(), stacks_.end(), [&](const auto& entry) { return entry.first == stack; });
  }

  entries stacks_;
};

}  // namespace alloy
