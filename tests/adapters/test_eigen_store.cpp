// alloy::eigen: Eigen matrices, arrays, vectors and Maps as a zero-copy parameter store.

#include <array>
#include <cstring>
#include <vector>

#include <Eigen/Core>
#include <catch2/catch.hpp>

#include "alloy/align/pam.hpp"
#include "alloy/eigen/eigen_store.hpp"
#include "alloy/merge/execute_plan.hpp"
#include "store_conformance.hpp"

using namespace alloy;
using alloy::eigen_adapter::eigen_store;

namespace {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class Object>
void fill(Object& object, const_tensor_view view) {
  REQUIRE(static_cast<std::size_t>(object.size()) * sizeof(typename Object::Scalar) == view.byte_size());
  if (view.byte_size() != 0) std::memcpy(object.data(), view.data(), view.byte_size());
}

}  // namespace

TEST_CASE("eigen_store conforms to the store concepts", "[adapters][eigen][conformance]") {
  const memory_store reference = testing::reference_content();
  row_matrix f32_a(4, 3);
  Eigen::Matrix<Eigen::bfloat16, 3, 5, Eigen::RowMajor> bf16;
  Eigen::Matrix<Eigen::half, Eigen::Dynamic, 1> f16(7);
  Eigen::Matrix<float, 1, 1> scalar_as_vector;  // viewed as [1]: Eigen has no rank 0
  row_matrix empty(0, 8);
  Eigen::Array<std::int64_t, 8, 1> positions;  // viewed as [8]: Eigen has no rank 3
  Eigen::Array<bool, Eigen::Dynamic, 1> mask(5);
  fill(f32_a, reference.view("encoder.layers.1.weight"));
  fill(bf16, reference.view("encoder.layers.0.weight"));
  fill(f16, reference.view("head.bias"));
  fill(scalar_as_vector, reference.view("scale"));
  fill(positions, reference.view("positions"));
  fill(mask, reference.view("mask"));

  // Eigen cannot hold rank 0 or rank 3: those two are compared with reshaped references.
  memory_store expected;
  for (const auto& name : reference.names()) {
    const const_tensor_view v = reference.view(name);
    if (name == "scale") expected.insert(name, const_tensor_view(v.data(), v.dtype(), shape{1}));
    else if (name == "positions") expected.insert(name, const_tensor_view(v.data(), v.dtype(), shape{8}));
    else expected.insert(name, v);
  }
  eigen_store store;
  store.add("encoder.layers.1.weight", f32_a);
  store.add("encoder.layers.0.weight", bf16);
  store.add("head.bias", f16);
  store.add("scale", scalar_as_vector);
  store.add("empty", empty);
  store.add("positions", positions);
  store.add("mask", mask);
  testing::check_store_conforms(store, expected);
  testing::check_mutable_store_conforms(store);
}

TEST_CASE("column-major matrices need an explicit layout", "[adapters][eigen]") {
  Eigen::MatrixXf column_major(2, 3);  // Eigen's default
  column_major << 1, 2, 3, 4, 5, 6;
  eigen_store store;
  CHECK_THROWS_WITH(store.add("w", column_major),
                    Catch::Contains("'w'") && Catch::Contains("column-major 2x3") && Catch::Contains("add_transposed"));
  store.add_transposed("w", column_major);
  const const_tensor_view view = store.view("w");
  CHECK(view.shape() == shape{3, 2});
  // Row r of the [3, 2] tensor is column r of the matrix.
  const auto values = view.as<float>();
  CHECK(std::vector<float>(values.begin(), values.end()) == std::vector<float>{1, 4, 2, 5, 3, 6});

  row_matrix row_major(2, 3);
  CHECK_THROWS_WITH(store.add_transposed("r", row_major), Catch::Contains("row-major"));
  Eigen::VectorXf vector(4);
  CHECK_THROWS_WITH(store.add_transposed("v", vector), Catch::Contains("vector"));
  Eigen::MatrixXf one_column(5, 1);  // a column-major matrix with one column lies like a vector
  store.add("c", one_column);
  CHECK(store.view("c").shape() == shape{5, 1});
}

TEST_CASE("Maps, blocks and const objects", "[adapters][eigen]") {
  std::vector<float> raw{1, 2, 3, 4, 5, 6};
  eigen_store store;
  Eigen::Map<row_matrix> mapped(raw.data(), 2, 3);
  store.add("mapped", mapped);
  CHECK(store.view("mapped").data() == reinterpret_cast<const std::byte*>(raw.data()));
  store.mutable_view("mapped").as<float>()[4] = 50;
  CHECK(raw[4] == 50);

  const Eigen::VectorXf fixed = Eigen::VectorXf::Ones(3);
  store.add("const", fixed);
  CHECK(store.view("const").numel() == 3);
  CHECK_THROWS_WITH(store.mutable_view("const"), Catch::Contains("'const'") && Catch::Contains("const"));
  const Eigen::Map<const Eigen::VectorXf> const_map(raw.data(), 6);
  store.add("const_map", const_map);
  CHECK_THROWS_WITH(store.mutable_view("const_map"), Catch::Contains("const"));

  row_matrix big = row_matrix::Zero(4, 4);
  auto block = big.block(1, 1, 2, 2);  // padded rows: not contiguous
  CHECK_THROWS_WITH(store.add("block", block), Catch::Contains("'block'") && Catch::Contains("not contiguous"));
  auto rows = big.middleRows(1, 2);  // whole rows: contiguous
  store.add("rows", rows);
  CHECK(store.view("rows").shape() == shape{2, 4});
  CHECK_THROWS_WITH(store.add("rows", rows), Catch::Contains("duplicate"));
}

TEST_CASE("a resized or reassigned matrix is viewed as it is now", "[adapters][eigen]") {
  row_matrix w = row_matrix::Ones(2, 2);
  eigen_store store;
  store.add("w", w);
  w = row_matrix::Constant(3, 5, 2.0f);  // reallocates
  const const_tensor_view now = store.view("w");
  CHECK(now.data() == reinterpret_cast<const std::byte*>(w.data()));
  CHECK(now.shape() == shape{3, 5});
  CHECK(now.as<float>()[14] == 2.0f);

  Eigen::MatrixXf column(4, 1);  // column-major, one column: fine as [4, 1]
  store.add("column", column);
  column.resize(2, 2);  // now a real column-major matrix: refused at lookup
  CHECK_THROWS_WITH(store.view("column"), Catch::Contains("add_transposed"));
}

TEST_CASE("Eigen weights merge and align in place", "[adapters][eigen]") {
  row_matrix a(2, 2), b(2, 2), out(2, 2);
  a << 1, -2, 3, 4;
  b << 3, 2, -1, 0;
  Eigen::VectorXf bias_a(2), bias_b(2), bias_out(2);
  bias_a << 1, 1;
  bias_b << 3, 5;
  std::array<eigen_store, 2> models;
  models[0].add("w", a);
  models[0].add("b", bias_a);
  models[1].add("w", b);
  models[1].add("b", bias_b);
  eigen_store target;
  target.add("w", out);
  target.add("b", bias_out);
  const merge_recipe average{.method = "linear", .model_parameters = {{{"weight", 1.0}}, {{"weight", 1.0}}}};
  merge_stores_into(average, cpu_backend{}, static_cast<const eigen_store*>(nullptr), std::span<const eigen_store, 2>(models), target);
  CHECK(out == ((a + b) / 2).eval());
  CHECK(bias_out == Eigen::Vector2f(2, 3));

  // PAM on Eigen weights: p = 1 resets every sign conflict with G (here: a) to zero.
  pam_aligner aligner({1.0, 1, pam_reset::to_zero});
  aligner.set_global(cpu_backend{}, models[0]);
  const pam_report report = aligner.align(cpu_backend{}, models[0], models[1]);
  CHECK(report.reset_per_tensor.at("w") == 2);  // -2 vs 2, 3 vs -1
  row_matrix want(2, 2);
  want << 3, 0, 0, 0;
  CHECK(b == want);
}
