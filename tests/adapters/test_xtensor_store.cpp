#include <cstring>
#include <vector>

#include <catch2/catch.hpp>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include "alloy/merge/registry.hpp"
#include "alloy/xtensor/xtensor_store.hpp"
#include "store_conformance.hpp"

using namespace alloy;
using alloy::xtensor_adapter::xtensor_store;

namespace {

// The conformance content as xt::xarray containers of the matching value types.
struct containers {
  xt::xarray<float> f32_a, f32_scalar, f32_empty;
  xt::xarray<bfloat16> bf16;
  xt::xarray<float16> f16;
  xt::xarray<std::int64_t> i64;
  xt::xarray<bool> mask;
};

template <class T>
void fill(xt::xarray<T>& array, const_tensor_view view) {
  std::vector<std::size_t> dims(view.shape().begin(), view.shape().end());
  array = xt::xarray<T>::from_shape(dims);
  if (view.byte_size() != 0) std::memcpy(array.data(), view.data(), view.byte_size());
}

}  // namespace

TEST_CASE("xtensor_store conforms to the store concepts", "[adapters][xtensor][conformance]") {
  const memory_store reference = testing::reference_content();
  containers c;
  fill(c.f32_a, reference.view("encoder.layers.1.weight"));
  fill(c.bf16, reference.view("encoder.layers.0.weight"));
  fill(c.f16, reference.view("head.bias"));
  fill(c.f32_scalar, reference.view("scale"));
  fill(c.f32_empty, reference.view("empty"));
  fill(c.i64, reference.view("positions"));
  fill(c.mask, reference.view("mask"));
  xtensor_store store;
  store.add("encoder.layers.1.weight", c.f32_a);
  store.add("encoder.layers.0.weight", c.bf16);
  store.add("head.bias", c.f16);
  store.add("scale", c.f32_scalar);
  store.add("empty", c.f32_empty);
  store.add("positions", c.i64);
  store.add("mask", c.mask);
  testing::check_store_conforms(store, reference);
  testing::check_mutable_store_conforms(store);
}

TEST_CASE("xtensor containers and adaptors merge in place", "[adapters][xtensor]") {
  xt::xtensor<float, 2> a = {{1, 2}, {3, 4}};
  std::vector<float> raw{5, 6, 7, 8};
  auto b = xt::adapt(raw, std::vector<std::size_t>{2, 2});
  xtensor_store store_a, store_b;
  store_a.add("w", a);
  store_b.add("w", b);
  CHECK(store_b.view("w").data() == reinterpret_cast<const std::byte*>(raw.data()));  // zero-copy
  const const_tensor_view models[] = {store_a.view("w"), store_b.view("w")};
  const model_parameters halves[] = {{0.5}, {0.5}};
  linear_merge{}.merge(cpu_backend{}, merge_inputs{"w", std::nullopt, models, halves}, store_a.mutable_view("w"));
  const xt::xtensor<float, 2> expected = {{3, 4}, {5, 6}};
  CHECK(bool(a == expected));
}

TEST_CASE("column-major and strided xtensor expressions are refused by name", "[adapters][xtensor]") {
  xt::xarray<float, xt::layout_type::column_major> column_major = xt::xarray<float, xt::layout_type::column_major>::from_shape({2, 3});
  xtensor_store store;
  CHECK_THROWS_WITH(store.add("cm", column_major), Catch::Contains("'cm'") && Catch::Contains("row-major"));
  xt::xarray<float> fine = {1, 2};
  store.add("w", fine);
  CHECK_THROWS_WITH(store.add("w", fine), Catch::Contains("duplicate"));
}

TEST_CASE("a container that reallocates is viewed where it is now", "[adapters][xtensor]") {
  xt::xtensor<float, 2> w = {{1, 2}, {3, 4}};
  xtensor_store store;
  store.add("w", w);
  // xtensor evaluates `w -= expression` into a temporary and swaps it in when the expression may
  // alias w: the buffer moves.
  w -= xt::sum(xt::view(w, xt::all(), xt::all(), xt::newaxis()) * xt::xtensor<float, 1>{1, 1}, {2});
  w = xt::xtensor<float, 2>{{1, 2, 3}, {4, 5, 6}, {7, 8, 9}};
  const const_tensor_view now = store.view("w");
  CHECK(now.data() == reinterpret_cast<const std::byte*>(w.data()));
  CHECK(now.shape() == shape{3, 3});
  CHECK(now.as<float>()[8] == 9.0f);
}
