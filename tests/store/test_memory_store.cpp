#include <array>
#include <span>

#include <catch2/catch.hpp>

#include "alloy/core/convert.hpp"
#include "alloy/store/memory_store.hpp"
#include "alloy/store/store_subset.hpp"
#include "store_conformance.hpp"

using namespace alloy;

TEST_CASE("memory_store conforms to the store concepts", "[store][memory_store][conformance]") {
  const memory_store reference = testing::reference_content();
  memory_store copy = copy_store(reference);
  testing::check_store_conforms(copy, reference);
  testing::check_mutable_store_conforms(copy);
}

TEST_CASE("memory_store keeps insertion order and zero-fills", "[store][memory_store]") {
  memory_store store;
  store.insert("b", dtype::f32, {2});
  store.insert("a", dtype::bf16, {3, 1});
  CHECK(store.names() == std::vector<std::string>{"b", "a"});
  for (auto byte : store.view("a").bytes()) CHECK(byte == std::byte{0});
  CHECK(reinterpret_cast<std::uintptr_t>(store.view("b").data()) % memory_store::alignment == 0);
}

TEST_CASE("memory_store refuses a duplicate name", "[store][memory_store]") {
  memory_store store;
  store.insert("w", dtype::f32, {2});
  try {
    store.insert("w", dtype::f32, {2});
    FAIL("duplicate accepted");
  } catch (const error& e) {
    CHECK(e.code() == error_code::already_exists);
    CHECK_THAT(e.what(), Catch::Contains("'w'"));
  }
}

TEST_CASE("memory_store copies are deep and moves keep views valid", "[store][memory_store]") {
  memory_store store;
  std::array<float, 3> values{1, 2, 3};
  store.insert("w", const_tensor_view(std::span<const float>(values), shape{3}));
  values[0] = 100;  // the store owns a copy
  CHECK(store.view("w").as<float>()[0] == 1.0f);

  memory_store copy = store;
  copy.mutable_view("w").as<float>()[1] = 20;
  CHECK(store.view("w").as<float>()[1] == 2.0f);

  const auto* data = store.view("w").data();
  memory_store moved = std::move(store);
  CHECK(moved.view("w").data() == data);
}

TEST_CASE("assign copies a store into another's tensors, converting floats, all or nothing", "[store][memory]") {
  memory_store source;
  auto w = source.insert("w", dtype::f32, {2, 2}).as<float>();
  w[0] = 1.5f;
  w[3] = -2.0f;
  memory_store target;
  target.insert("w", dtype::bf16, {2, 2});
  target.insert("untouched", dtype::f32, {1}).as<float>()[0] = 9.0f;
  assign(target, source);
  CHECK(load_as_float(target.view("w"), 0) == 1.5f);
  CHECK(load_as_float(target.view("w"), 3) == -2.0f);
  CHECK(target.view("untouched").as<float>()[0] == 9.0f);

  w[0] = 4.0f;
  memory_store changed = source;
  changed.insert("z", dtype::f32, {1});
  CHECK_THROWS_WITH(assign(target, changed), Catch::Contains("'z'"));
  CHECK(load_as_float(target.view("w"), 0) == 1.5f);  // nothing written
  memory_store misshapen;
  misshapen.insert("w", dtype::f32, {4});
  CHECK_THROWS_WITH(assign(target, misshapen), Catch::Contains("'w'") && Catch::Contains("[4]"));
  memory_store integers;
  integers.insert("w", dtype::i64, {2, 2});
  CHECK_THROWS_WITH(assign(target, integers), Catch::Contains("'w'") && Catch::Contains("I64"));
}

TEST_CASE("store_subset lists and forwards only the names it keeps, without copies", "[store][subset]") {
  memory_store source;
  source.insert("text.weight", dtype::f32, {2});
  source.insert("text.position_ids", dtype::i64, {3});
  source.insert("vision.weight", dtype::f32, {4});
  const store_subset weights(source, [](std::string_view name) { return name.find("position_ids") == std::string_view::npos; });
  static_assert(parameter_store<decltype(weights)>);
  CHECK(weights.names() == std::vector<std::string>{"text.weight", "vision.weight"});
  CHECK(weights.view("vision.weight").data() == source.view("vision.weight").data());
  CHECK_FALSE(weights.find("text.position_ids").has_value());
  CHECK_THROWS_WITH(weights.view("text.position_ids"), Catch::Contains("'text.position_ids'") && Catch::Contains("subset"));
  memory_store copy = copy_store(weights);
  CHECK(copy.size() == 2);
}
