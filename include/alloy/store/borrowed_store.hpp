#pragma once
// The lookup half of stores that view objects they do not own (Eigen matrices, xtensor
// containers). Each entry is the object's address and a function that says where its data is and
// what shape it has *now*: an object that reallocates (is resized, reassigned, or swapped with a
// temporary by its library) is still viewed correctly, and nothing dangles. A store derives from
// borrowed_store<Store>, validates an object when it is added, and provides description().

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "alloy/core/error.hpp"
#include "alloy/core/tensor_view.hpp"
#include "alloy/store/named_store.hpp"

namespace alloy {

template <class Store>
class borrowed_store : public named_store<Store> {
 public:
  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    const auto position = this->index_.find(name);
    if (!position) return std::nullopt;
    return const_tensor_view(view_of(*position));
  }
  [[nodiscard]] std::optional<tensor_view> find_mutable(std::string_view name) {
    const auto position = this->index_.find(name);
    if (!position) return std::nullopt;
    if (entries_[*position].read_only) {
      detail::fail(error_code::invalid_argument, "tensor ", detail::quoted{name}, " of ", Store::description(),
                   " was added as const (or views const data): it cannot be written");
    }
    return view_of(*position);
  }

 protected:
  struct located {
    std::byte* data;
    shape dims;
  };
  using locator = located (*)(void* object);

  void add_borrowed(std::string name, const void* object, locator locate, dtype type, bool read_only) {
    this->index_.add(std::move(name), Store::description());
    entries_.push_back({const_cast<void*>(object), locate, type, read_only});
  }

 private:
  struct entry {
    void* object;
    locator locate;
    dtype type;
    bool read_only;
  };

  [[nodiscard]] tensor_view view_of(std::size_t position) const {
    const entry& e = entries_[position];
    const located now = e.locate(e.object);
    return tensor_view(now.data, e.type, now.dims);
  }

  std::vector<entry> entries_;
};

}  // namespace alloy
