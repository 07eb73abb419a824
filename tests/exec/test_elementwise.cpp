#include <cmath>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/exec/elementwise.hpp"
#include "alloy/exec/random.hpp"
#include "alloy/exec/reduce.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::testing::insert_values;
using alloy::testing::random_values;
using alloy::testing::values_of;

namespace {
struct affine_kernel {
  float a, b;
  template <class Values>
  float operator()(const Values& v, std::size_t) const { return a * v[0] + b * v[1]; }
};
}  // namespace

TEST_CASE("elementwise computes in f32 and rounds once into the output dtype", "[exec][elementwise]") {
  memory_store store;
  const std::size_t n = 3000;
  const auto x = random_values(n, 1);
  const auto y = random_values(n, 2);
  insert_values(store, "x", x, shape{30, 100}, dtype::bf16);
  insert_values(store, "y", y, shape{30, 100}, dtype::f16);
  const tensor_view out = store.insert("out", dtype::bf16, shape{30, 100});
  const const_tensor_view inputs[] = {store.view("x"), store.view("y")};
  elementwise(cpu_backend{}, out, inputs, affine_kernel{2.0f, -0.5f});
  const auto xs = values_of(store.view("x"));
  const auto ys = values_of(store.view("y"));
  const auto got = values_of(out);
  for (std::size_t i = 0; i < n; ++i) {
    REQUIRE(got[i] == static_cast<float>(bfloat16(2.0f * xs[i] - 0.5f * ys[i])));
  }
}

TEST_CASE("elementwise refuses mismatched sizes and non-float dtypes", "[exec][elementwise]") {
  memory_store store;
  const tensor_view a = store.insert("a", dtype::f32, {4});
  const tensor_view b = store.insert("b", dtype::f32, {5});
  const tensor_view i = store.insert("i", dtype::i32, {4});
  const const_tensor_view mismatched[] = {a, b};
  CHECK_THROWS_WITH(elementwise(cpu_backend{}, a, mismatched, affine_kernel{1, 1}), Catch::Contains("shape"));
  const const_tensor_view integers[] = {a, i};
  CHECK_THROWS_WITH(elementwise(cpu_backend{}, a, integers, affine_kernel{1, 1}), Catch::Contains("I32"));
}

TEST_CASE("reductions are identical on one and two threads", "[exec][reduce]") {
  memory_store store;
  const std::size_t n = cpu_backend::chunk_elements * 5 + 77;
  insert_values(store, "x", random_values(n, 3), shape{static_cast<std::int64_t>(n)});
  insert_values(store, "y", random_values(n, 4), shape{static_cast<std::int64_t>(n)});
  const auto x = store.view("x");
  const auto y = store.view("y");
  CHECK(dot(cpu_backend{1}, x, y) == dot(cpu_backend{2}, x, y));
  CHECK(squared_norm(cpu_backend{1}, x) == squared_norm(cpu_backend{2}, x));
  double expected = 0;
  const auto xs = values_of(x);
  for (float v : xs) expected += static_cast<double>(v);
  CHECK(sum(cpu_backend{}, x) == Approx(expected).epsilon(1e-12));
}

TEST_CASE("the random stream is a pure function of seed, name, model and index", "[exec][random]") {
  const auto key = random_stream_key(42, "layer.0.weight", 1);
  CHECK(key == random_stream_key(42, "layer.0.weight", 1));
  CHECK(key != random_stream_key(43, "layer.0.weight", 1));
  CHECK(key != random_stream_key(42, "layer.1.weight", 1));
  CHECK(key != random_stream_key(42, "layer.0.weight", 2));
  double mean = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const float u = uniform01(key, static_cast<std::size_t>(i));
    REQUIRE((u >= 0.0f && u < 1.0f));
    mean += static_cast<double>(u);
  }
  CHECK(mean / n == Approx(0.5).margin(0.005));
}

TEST_CASE("an exception inside a parallel loop reaches the caller", "[exec][parallel]") {
  const std::size_t n = cpu_backend::chunk_elements * 4;
  CHECK_THROWS_WITH(for_each_chunk(cpu_backend{2}, n,
                                   [](std::size_t chunk, std::size_t, std::size_t) {
                                     if (chunk == 2) throw std::runtime_error("chunk 2 failed");
                                   }),
                    "chunk 2 failed");
  CHECK_THROWS_WITH(for_each_index(cpu_backend{2}, 10,
                                   [](std::size_t i) {
                                     if (i == 7) throw std::runtime_error("index 7 failed");
                                   }),
                    "index 7 failed");
}
