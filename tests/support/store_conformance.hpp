#pragma once
// The behaviour every parameter store in alloy must show, checked against one reference content.
// A new store (an adapter, a new file format) adds a test that builds itself from
// `reference_content()` and calls these checks.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/core/error.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/parameter_store.hpp"

namespace alloy::testing {

// Mixed dtypes and ranks, a scalar and an empty tensor, names in no sorted order.
inline memory_store reference_content() {
  memory_store store;
  const auto fill = [](tensor_view view, unsigned seed) {
    auto bytes = view.bytes();
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      bytes[i] = static_cast<std::byte>((i * 131u + seed * 17u + 7u) & 0xffu);
    }
  };
  fill(store.insert("encoder.layers.1.weight", dtype::f32, {4, 3}), 1);
  fill(store.insert("encoder.layers.0.weight", dtype::bf16, {3, 5}), 2);
  fill(store.insert("head.bias", dtype::f16, {7}), 3);
  fill(store.insert("scale", dtype::f32, {}), 4);
  fill(store.insert("empty", dtype::f32, {0, 8}), 5);
  fill(store.insert("positions", dtype::i64, {2, 2, 2}), 6);
  fill(store.insert("mask", dtype::boolean, {5}), 7);
  return store;
}

template <parameter_store S>
void check_store_conforms(const S& store, const memory_store& expected) {
  REQUIRE(store.size() == expected.size());
  std::vector<std::string> names(store.names().begin(), store.names().end());
  REQUIRE(names.size() == store.size());

  // Names are unique, stable across calls, and exactly the expected set.
  std::vector<std::string> again(store.names().begin(), store.names().end());
  CHECK(names == again);
  const std::set<std::string> unique(names.begin(), names.end());
  CHECK(unique.size() == names.size());
  const std::set<std::string> wanted(expected.names().begin(), expected.names().end());
  CHECK(unique == wanted);

  for (const auto& name : names) {
    CHECK(store.contains(name));
    const auto found = store.find(name);
    REQUIRE(found.has_value());
    const const_tensor_view view = store.view(name);
    CHECK(view.data() == found->data());
    const const_tensor_view want = expected.view(name);
    CHECK(view.dtype() == want.dtype());
    CHECK(view.shape() == want.shape());
    REQUIRE(view.byte_size() == want.byte_size());
    // (memcmp with a null pointer is undefined even for 0 bytes: empty containers may have no buffer)
    if (want.byte_size() != 0) CHECK(std::memcmp(view.data(), want.data(), want.byte_size()) == 0);
  }

  CHECK_FALSE(store.contains("no.such.tensor"));
  CHECK_FALSE(store.find("no.such.tensor").has_value());
  try {
    (void)store.view("no.such.tensor");
    FAIL("view of a missing tensor must throw");
  } catch (const alloy::error& e) {
    CHECK(e.code() == error_code::not_found);
    CHECK_THAT(e.what(), Catch::Contains("no.such.tensor"));
  }
}

template <mutable_parameter_store S>
void check_mutable_store_conforms(S& store) {
  for (const auto& name : std::vector<std::string>(store.names().begin(), store.names().end())) {
    tensor_view view = store.mutable_view(name);
    auto found = store.find_mutable(name);
    REQUIRE(found.has_value());
    CHECK(found->data() == view.data());
    for (auto& byte : view.bytes()) byte = std::byte{0x5a};
    const auto bytes = store.view(name).bytes();
    CHECK(std::all_of(bytes.begin(), bytes.end(), [](std::byte b) { return b == std::byte{0x5a}; }));
  }
  CHECK_FALSE(store.find_mutable("no.such.tensor").has_value());
  CHECK_THROWS_AS(store.mutable_view("no.such.tensor"), alloy::error);
}

}  // namespace alloy::testing
