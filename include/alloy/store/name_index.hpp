#pragma once
// Names in a stable order plus lookup by name: the bookkeeping every store shares.

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "alloy/core/error.hpp"

namespace alloy::detail {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view text) const noexcept {
    return std::hash<std::string_view>{}(text);
  }
};

class name_index {
 public:
  // Appends `name` and returns its position; fails if the name is already present.
  std::size_t add(std::string name, std::string_view where) {
    const std::size_t position = names_.size();
    auto [it, inserted] = positions_.try_emplace(name, position);
    if (!inserted) {
      fail(error_code::already_exists, "duplicate tensor name ", quoted{name}, " in ", where);
    }
    names_.push_back(std::move(name));
    return position;
  }

  [[nodiscard]] std::optional<std::size_t> find(std::string_view name) const {
    const auto it = positions_.find(name);
    if (it == positions_.end()) return std::nullopt;
    return it->second;
  }

  [[nodiscard]] const std::vector<std::string>& names() const noexcept { return names_; }
  [[nodiscard]] std::size_t size() const noexcept { return names_.size(); }

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, std::size_t, string_hash, std::equal_to<>> positions_;
};

}  // namespace alloy::detail
