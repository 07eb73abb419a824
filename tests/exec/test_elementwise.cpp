#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
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

TEST_CASE("first_non_finite finds the first NaN or infinity in every floating dtype", "[exec][reduce]") {
  // Positions on both sides of block (256) and chunk (65536) boundaries, on 1 and 3 threads;
  // a second non-finite value later on must not win.
  const std::size_t n = 3 * cpu_backend::chunk_elements + 77;
  const std::size_t positions[] = {0, 255, 256, cpu_backend::chunk_elements - 1, cpu_backend::chunk_elements, n - 1};
  for (const dtype type : {dtype::f64, dtype::f32, dtype::f16, dtype::bf16}) {
    for (const std::size_t at : positions) {
      for (const float bad : {std::nanf(""), INFINITY, -INFINITY}) {
        memory_store store;
        std::vector<float> values = random_values(n, 3);
        values[at] = bad;
        if (at + 1000 < n) values[at + 1000] = std::nanf("");
        const auto view = insert_values(store, "x", values, shape{static_cast<std::int64_t>(n)}, type);
        INFO(name(type) << " at " << at << " value " << bad);
        CHECK(first_non_finite(cpu_backend{1}, view) == at);
        CHECK(first_non_finite(cpu_backend{3}, view) == at);
      }
    }
    memory_store store;
    const auto finite = insert_values(store, "x", random_values(n, 4), shape{static_cast<std::int64_t>(n)}, type);
    CHECK_FALSE(first_non_finite(cpu_backend{2}, finite).has_value());
  }
  // 8-bit floats, as bytes: E4M3 (the "fn" variant) has only NaN, S.1111.111; E5M2 has
  // infinities S.11111.00 and NaNs S.11111.xx. Every other byte is finite.
  const std::pair<dtype, std::vector<std::uint8_t>> eight_bit[] = {
      {dtype::f8_e4m3, {0x7f, 0xff}}, {dtype::f8_e5m2, {0x7c, 0x7d, 0x7e, 0x7f, 0xfc, 0xfd, 0xfe, 0xff}}};
  for (const auto& [type, non_finite] : eight_bit) {
    std::vector<std::uint8_t> bytes(n);
    for (std::size_t i = 0; i < n; ++i) {
      std::uint8_t b = static_cast<std::uint8_t>(i * 37 + 11);
      while (std::find(non_finite.begin(), non_finite.end(), b) != non_finite.end()) ++b;
      bytes[i] = b;
    }
    const const_tensor_view finite(reinterpret_cast<const std::byte*>(bytes.data()), type, shape{static_cast<std::int64_t>(n)});
    CHECK_FALSE(first_non_finite(cpu_backend{2}, finite).has_value());
    for (const std::size_t at : positions) {
      for (const std::uint8_t bad : non_finite) {
        std::vector<std::uint8_t> poisoned = bytes;
        poisoned[at] = bad;
        const const_tensor_view view(reinterpret_cast<const std::byte*>(poisoned.data()), type,
                                     shape{static_cast<std::int64_t>(n)});
        INFO(name(type) << " at " << at << " byte " << int{bad});
        CHECK(first_non_finite(cpu_backend{3}, view) == at);
      }
    }
  }
  // The largest finite values are not mistaken for infinities; integers never hold one.
  memory_store store;
  const auto extremes = insert_values(store, "h", {65504.0f, -65504.0f, 0.0f, -0.0f}, shape{4}, dtype::f16);
  CHECK_FALSE(first_non_finite(cpu_backend{}, extremes).has_value());
  const auto integers = store.insert("i", dtype::i32, shape{4});
  std::memset(integers.data(), 0xff, integers.byte_size());
  CHECK_FALSE(first_non_finite(cpu_backend{}, integers).has_value());
  CHECK_FALSE(first_non_finite(cpu_backend{}, store.insert("empty", dtype::f32, shape{0})).has_value());
}

TEST_CASE("row reductions sum each row or column in a fixed order", "[exec][reduce]") {
  memory_store store;
  const std::size_t rows = 1500;
  const std::size_t cols = 70;  // groups of whole rows: several per chunk, rows across groups
  insert_values(store, "x", random_values(rows * cols, 5), shape{static_cast<std::int64_t>(rows), static_cast<std::int64_t>(cols)},
                dtype::bf16);
  const auto x = store.view("x");
  const auto xs = values_of(x);
  const const_tensor_view inputs[] = {x};
  const auto sum_and_squares = [](const auto& v, std::size_t, double* sums) {
    sums[0] += static_cast<double>(v[0]);
    sums[1] += static_cast<double>(v[0]) * static_cast<double>(v[0]);
  };
  const tensor_rows by_row = tensor_rows::last_axis(x.shape());
  REQUIRE(by_row.count == rows);
  const std::vector<double> row_sums = reduce_rows(cpu_backend{1}, inputs, by_row, 2, sum_and_squares);
  REQUIRE(row_sums.size() == 2 * rows);
  for (std::size_t r = 0; r < rows; ++r) {
    double s = 0, q = 0;  // element order, as documented: equal, not just close
    for (std::size_t j = 0; j < cols; ++j) {
      s += static_cast<double>(xs[r * cols + j]);
      q += static_cast<double>(xs[r * cols + j]) * static_cast<double>(xs[r * cols + j]);
    }
    REQUIRE(row_sums[2 * r] == s);
    REQUIRE(row_sums[2 * r + 1] == q);
  }
  CHECK(reduce_rows(cpu_backend{2}, inputs, by_row, 2, sum_and_squares) == row_sums);

  const tensor_rows by_column = tensor_rows::first_axis(x.shape());
  REQUIRE(by_column.count == cols);
  REQUIRE(by_column.strided);
  const std::vector<double> column_sums = reduce_rows(cpu_backend{}, inputs, by_column, 2, sum_and_squares);
  for (std::size_t c = 0; c < cols; ++c) {
    double s = 0;
    for (std::size_t r = 0; r < rows; ++r) s += static_cast<double>(xs[r * cols + c]);
    REQUIRE(column_sums[2 * c] == s);
  }
  for (std::size_t i = 0; i < rows * cols; i += 997) {
    CHECK(by_row.row_of(i) == i / cols);
    CHECK(by_column.row_of(i) == i % cols);
    CHECK(by_row.element(by_row.row_of(i), i % cols) == i);
    CHECK(by_column.element(by_column.row_of(i), i / cols) == i);
  }
  // One vector (a 1-D tensor) is the whole tensor, summed as reduce_sums sums it.
  const tensor_rows whole = tensor_rows::last_axis(shape{static_cast<std::int64_t>(rows * cols)});
  CHECK(whole.count == 1);
  const std::vector<double> total = reduce_rows(cpu_backend{}, inputs, tensor_rows::whole(rows * cols), 2, sum_and_squares);
  CHECK(total == reduce_sums(cpu_backend{}, inputs, rows * cols, 2, sum_and_squares));
  CHECK_THROWS_WITH(reduce_rows(cpu_backend{}, inputs, tensor_rows{7, 10, false}, 1, sum_and_squares),
                    Catch::Contains("elements"));
}
