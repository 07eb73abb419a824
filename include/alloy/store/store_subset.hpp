#pragma once
// Some of a store's tensors, by name, without copying: a view that lists only the names a
// predicate keeps and forwards lookups to the source. For loading a checkpoint minus the buffers
// a model does not have, or merging only a model's adapter weights.

#include <optional>
#include <string>
#include <string_view>

#include "alloy/core/tensor_view.hpp"
#include "alloy/store/named_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy {

template <parameter_store Source>
class store_subset : public named_store<store_subset<Source>> {
 public:
  // Keeps the names for which keep(name) is true, in the source's order. The source must outlive
  // the subset.
  template <class Keep>
  store_subset(const Source& source, Keep&& keep) : source_(&source) {
    for (const auto& name : source.names()) {
      if (keep(std::string_view(name))) this->index_.add(std::string(name), "a store subset");
    }
  }

  [[nodiscard]] std::optional<const_tensor_view> find(std::string_view name) const {
    if (!this->contains(name)) return std::nullopt;
    return source_->find(name);
  }
  [[nodiscard]] static std::string_view description() noexcept { return "a store subset"; }

 private:
  const Source* source_;
};

template <parameter_store Source, class Keep>
store_subset(const Source&, Keep&&) -> store_subset<Source>;

}  // namespace alloy
