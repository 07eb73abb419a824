#pragma once
// The one interface every collection of named tensors in alloy offers, whatever owns the memory:
// a safetensors file, an in-memory store, a torch module, Eigen matrices. Policies and the CLI are
// written against these concepts only.
//
// A parameter_store has names in a stable order (the order in which streaming visits them) and
// hands out const views; a mutable_parameter_store also hands out views that write in place.
// `view` and `mutable_view` fail with error_code::not_found naming the tensor; `find` and
// `find_mutable` return an empty optional instead.

#include <concepts>
#include <cstddef>
#include <optional>
#include <ranges>
#include <string_view>

#include "alloy/core/tensor_view.hpp"

namespace alloy {

template <class S>
concept parameter_store = requires(const S& store, std::string_view name) {
  { store.names() } -> std::ranges::random_access_range;
  requires std::convertible_to<std::ranges::range_reference_t<decltype(store.names())>,
                               std::string_view>;
  { store.size() } -> std::convertible_to<std::size_t>;
  { store.contains(name) } -> std::same_as<bool>;
  { store.find(name) } -> std::same_as<std::optional<const_tensor_view>>;
  { store.view(name) } -> std::same_as<const_tensor_view>;
};

template <class S>
concept mutable_parameter_store =
    parameter_store<S> && requires(S& store, std::string_view name) {
      { store.find_mutable(name) } -> std::same_as<std::optional<tensor_view>>;
      { store.mutable_view(name) } -> std::same_as<tensor_view>;
    };

// Total bytes of every tensor in a store.
template <parameter_store S>
std::size_t total_bytes(const S& store) {
  std::size_t total = 0;
  for (const auto& name : store.names()) total += store.view(name).byte_size();
  return total;
}

namespace detail {
[[noreturn]] inline void fail_missing_tensor(std::string_view name, std::string_view where) {
  fail(error_code::not_found, "no tensor named ", quoted{name}, " in ", where);
}
}  // namespace detail

}  // namespace alloy
