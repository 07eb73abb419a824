#pragma once
// The lookup half of every store, written once: names in a stable order, size, contains, and
// view / mutable_view that fail by name. A store derives from named_store<Store>, fills index_
// in its order, and provides find (and find_mutable, if mutable) and description().

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/tensor_view.hpp"
#include "alloy/store/name_index.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

template <class Store>
class named_store {
 public:
  [[nodiscard]] const std::vector<std::string>& names() const noexcept { return index_.names(); }
  [[nodiscard]] std::size_t size() const noexcept { return index_.size(); }
  [[nodiscard]] bool contains(std::string_view name) const { return index_.find(name).has_value(); }

  [[nodiscard]] const_tensor_view view(std::string_view name) const {
    if (auto found = self().find(name)) return *found;
    detail::fail_missing_tensor(name, self().description());
  }

  template <class S = Store>
  [[nodiscard]] tensor_view mutable_view(std::string_view name) {
    if (auto found = static_cast<S&>(*this).find_mutable(name)) return *found;
    detail::fail_missing_tensor(name, self().description());
  }

 protected:
  detail::name_index index_;

 private:
  [[nodiscard]] const Store& self() const { return static_cast<const Store&>(*this); }
};

}  // namespace alloy
