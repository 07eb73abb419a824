// Hand-computed cases and properties of mergekit's newer methods (NuSLERP, Multi-SLERP, Karcher,
// SCE, RAM, Arcee Fusion, Model Stock per row), and the optional base through a plan. Equality
// with independent NumPy implementations is in tests/reference/test_merge_reference.cpp.

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "alloy/merge/execute_plan.hpp"
#include "alloy/merge/registry.hpp"
#include "tensor_builders.hpp"

using namespace alloy;
using alloy::testing::insert_values;
using alloy::testing::random_values;
using alloy::testing::values_of;

namespace {

std::vector<float> run(const merge_policy& policy, const std::optional<std::vector<float>>& base,
                       const std::vector<std::vector<float>>& models, const std::vector<double>& weights, shape dims,
                       int threads = 0) {
  memory_store store;
  std::optional<const_tensor_view> base_view;
  if (base) base_view = insert_values(store, "base", *base, dims);
  std::vector<const_tensor_view> views;
  std::vector<model_parameters> parameters(models.size());
  for (std::size_t i = 0; i < models.size(); ++i) {
    std::string name = std::to_string(i);
    views.push_back(insert_values(store, name, models[i], dims));
    if (i < weights.size()) parameters[i].weight = weights[i];
  }
  const tensor_view out = store.insert("out", dtype::f32, dims);
  merge_with(policy, cpu_backend{threads}, merge_inputs{"layers.0.weight", base_view, views, parameters}, out);
  return values_of(out);
}

void check_close(const std::vector<float>& got, const std::vector<double>& want, double tolerance = 1e-6) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i);
    CHECK(static_cast<double>(got[i]) == Approx(want[i]).margin(tolerance));
  }
}

}  // namespace

TEST_CASE("NuSLERP interpolates two models on the sphere, of task vectors with a base", "[merge][nuslerp]") {
  // Orthogonal unit vectors at t = w1 / (w0 + w1) = 0.5: the bisector, cos(pi / 4) each.
  const double c = std::sin(M_PI / 4) / std::sin(M_PI / 2);
  check_close(run(nuslerp_merge{}, std::nullopt, {{1, 0}, {0, 1}}, {1, 1}, shape{2}), {c, c});
  // t = 0.25: sin(0.75 * pi/2), sin(0.25 * pi/2).
  check_close(run(nuslerp_merge{}, std::nullopt, {{1, 0}, {0, 1}}, {3, 1}, shape{2}),
              {std::sin(0.75 * M_PI / 2), std::sin(0.25 * M_PI / 2)});
  // With a base, the task vectors (1, 0) and (0, 1) from (5, 5).
  check_close(run(nuslerp_merge{}, std::vector<float>{5, 5}, {{6, 5}, {5, 6}}, {1, 1}, shape{2}), {5 + c, 5 + c}, 1e-5);
  // Weights summing to about 0 give t = 0.5; parallel vectors interpolate linearly.
  check_close(run(nuslerp_merge{}, std::nullopt, {{1, 2}, {2, 4}}, {1, -1}, shape{2}), {1.5, 3});
  // Per row (flatten off): each row of [2, 2] on its own; row-wise: each column.
  check_close(run(nuslerp_merge{false, false}, std::nullopt, {{1, 0, 2, 0}, {0, 1, 4, 0}}, {1, 1}, shape{2, 2}),
              {c, c, 3, 0});
  check_close(run(nuslerp_merge{true, false}, std::nullopt, {{1, 2, 0, 0}, {0, 4, 1, 0}}, {1, 1}, shape{2, 2}),
              {c, 3, c, 0});
  CHECK_THROWS_WITH(run(nuslerp_merge{}, std::nullopt, {{1}, {2}, {3}}, {1, 1, 1}, shape{1}),
                    Catch::Contains("exactly two models"));
}

TEST_CASE("Multi-SLERP and the Karcher mean of two models reduce to SLERP's midpoint", "[merge][multislerp][karcher]") {
  const double c = std::sqrt(0.5);
  // Orthogonal vectors of norms 1 and 3, equal weights: the bisector direction times the mean norm 2.
  const std::vector<double> midpoint{2 * c, 2 * c};
  check_close(run(multislerp_merge{}, std::nullopt, {{1, 0}, {0, 3}}, {1, 1}, shape{2}), midpoint, 1e-6);
  check_close(run(karcher_merge{}, std::nullopt, {{1, 0}, {0, 3}}, {}, shape{2}), midpoint, 1e-5);
  // One model is returned as it is, whatever the base.
  check_close(run(multislerp_merge{}, std::vector<float>{9, 9}, {{1, 2}}, {0.3}, shape{2}), {1, 2});
  // Antipodal models with equal weights: two fall back to the linear mean, three are refused.
  check_close(run(multislerp_merge{}, std::nullopt, {{1, 0}, {-1, 0}}, {1, 1}, shape{2}), {0, 0});
  CHECK_THROWS_WITH(run(multislerp_merge{}, std::nullopt, {{1, 0}, {-1, 0}, {0, 0}}, {1, 1, 0}, shape{2}),
                    Catch::Contains("cancel out"));
  CHECK_THROWS_WITH(run(multislerp_merge{}, std::nullopt, {{1, 0}, {0, 1}}, {1, -1}, shape{2}),
                    Catch::Contains("sum to 0"));
  // Karcher: the base is one more input; all-zero inputs give zeros.
  check_close(run(karcher_merge{}, std::vector<float>{1, 0}, {{0, 1}}, {}, shape{2}), {c, c}, 1e-5);
  check_close(run(karcher_merge{}, std::nullopt, {{0, 0}, {0, 0}}, {}, shape{2}), {0, 0});
}

TEST_CASE("the Karcher mean of three directions is their Riemannian mean, not their chordal mean", "[merge][karcher]") {
  // Unit vectors along x, y and z: the mean direction is (1, 1, 1) / sqrt(3) by symmetry.
  const auto got = run(karcher_merge{}, std::nullopt, {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}}, {}, shape{3});
  for (float v : got) CHECK(v == Approx(1 / std::sqrt(3.0)).margin(1e-6));
  // Unequal angles: (1, 0), (0, 1), (1, 0): the Karcher mean is at angle pi/6 from x (the mean
  // of the angles 0, pi/2, 0), where the chordal mean would be at atan(1/2).
  const auto skew = run(karcher_merge{100, 1e-9}, std::nullopt, {{1, 0}, {0, 1}, {1, 0}}, {}, shape{2});
  CHECK(std::atan2(skew[1], skew[0]) == Approx(M_PI / 6).margin(1e-5));
  CHECK(std::hypot(skew[0], skew[1]) == Approx(1.0).margin(1e-6));
}

TEST_CASE("SCE keeps high-variance entries, weights by energy and erases minority signs", "[merge][sce]") {
  const std::vector<float> base{0, 0, 0, 0};
  // Entry 0: both +; entry 1: +2 against -1 (sum +, the - erased); entry 2: equal (variance 0);
  // entry 3: only model 1 changed it.
  const std::vector<std::vector<float>> models{{1, 2, 1, 0}, {3, -1, 1, 2}};
  // mean squares: (1 + 4 + 1) / 4 = 1.5 and (9 + 1 + 1 + 4) / 4 = 3.75; weights 1.5/5.25, 3.75/5.25
  const double w0 = 1.5 / 5.25, w1 = 3.75 / 5.25;
  check_close(run(sce_merge{}, base, models, {}, shape{4}), {(w0 * 1 + w1 * 3) / (w0 + w1), 2, 1, 2}, 1e-6);
  // select_topk 0.5 of 3 non-zero variances: int(1.5) = 1 entry, the largest variance (entry 1:
  // values 2 and -1, variance 2.25; entry 0: 1; entry 3: 1).
  check_close(run(sce_merge{0.5}, base, models, {}, shape{4}), {0, 2, 0, 0}, 1e-6);
  check_close(run(sce_merge{0.0}, base, models, {}, shape{4}), {0, 0, 0, 0});
}

TEST_CASE("RAM keeps unique changes, averages shared ones, and RAM+ boosts the unique", "[merge][ram]") {
  const std::vector<float> base{1, 1, 1, 1, 1};
  const std::vector<std::vector<float>> models{{2, 1, 3, 1, 1.000001f}, {1, 1, 5, 0, 1}};
  // entry 0: model 0 alone (+1); 1: nobody; 2: both (+2, +4: mean 3); 3: model 1 alone (-1);
  // 4: below epsilon.
  check_close(run(ram_merge{}, base, models, {}, shape{5}), {2, 1, 4, 0, 1}, 1e-6);
  // RAM+: each model has 1 shared and 1 unique entry: lambda = 1 + 0.5 clamp(1, 0, 0.3) = 1.15.
  ram_merge plus{1e-5, true, 0.5, 0.3};
  check_close(run(plus, base, models, {}, shape{5}), {2.15, 1, 4, 1 - 1.15, 1}, 1e-6);
}

TEST_CASE("Arcee Fusion takes the model only where the change is an outlier of importance", "[merge][arcee_fusion]") {
  // One row: all entries change by 0.01 but one by 1.0; the importance of that one is far above
  // median + 1.5 IQR, the others sit at the median.
  std::vector<float> base(64, 0.0f);
  std::vector<float> model(64, 0.01f);
  model[17] = 1.0f;
  const auto got = run(arcee_fusion_merge{}, base, {model}, {}, shape{64});
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO(i);
    // Every importance equals the median except entry 17: the threshold is that median, so
    // everything at it is kept as well (importance >= threshold), entry 17 too.
    CHECK(got[i] == model[i]);
  }
  // Spread importances: only the outliers pass.
  std::vector<float> spread(64);
  for (std::size_t i = 0; i < spread.size(); ++i) spread[i] = 0.001f * static_cast<float>(i % 8);
  spread[40] = 2.0f;
  const auto outliers = run(arcee_fusion_merge{}, base, {spread}, {}, shape{64});
  for (std::size_t i = 0; i < outliers.size(); ++i) {
    INFO(i);
    CHECK(outliers[i] == (i == 40 ? 2.0f : 0.0f));
  }
  // Large values are fine (the softmax is shifted by the row's mean); one 790 above it is not.
  const auto high = run(arcee_fusion_merge{}, base, {std::vector<float>(64, 800.0f)}, {}, shape{64});
  CHECK(high[0] == 800.0f);
  std::vector<float> spike(64, 0.0f);
  spike[3] = 800.0f;
  CHECK_THROWS_WITH(run(arcee_fusion_merge{}, base, {spike}, {}, shape{64}), Catch::Contains("above the row's mean"));
}

TEST_CASE("Model Stock per row gives each row its own ratio; a 1-D tensor is one row", "[merge][model_stock]") {
  const std::vector<float> base{0, 0, 0, 0};
  // Row 0: offsets (1, 0) and (0, 1): cos 0, t = 0 -> the base. Row 1: offsets equal: cos 1, t = 1 -> the mean.
  const std::vector<std::vector<float>> models{{1, 0, 2, 2}, {0, 1, 2, 2}};
  check_close(run(model_stock_merge{true}, base, models, {}, shape{2, 2}), {0, 0, 2, 2});
  const auto values = random_values(300, 3);
  const std::vector<std::vector<float>> many{random_values(300, 4), random_values(300, 5), random_values(300, 6)};
  CHECK(run(model_stock_merge{true}, values, many, {}, shape{300}) == run(model_stock_merge{false}, values, many, {}, shape{300}));
}

TEST_CASE("the new methods give the same bits on one and two threads", "[merge][property]") {
  const std::size_t rows = 3 * cpu_backend::chunk_elements / 11 + 1;  // across chunk boundaries
  const std::size_t n = rows * 11;
  const shape dims{static_cast<std::int64_t>(rows), 11};
  const auto base = random_values(n, 1);
  std::vector<std::vector<float>> models;
  for (unsigned s = 2; s < 5; ++s) {
    auto m = random_values(n, s);
    for (std::size_t i = 0; i < n; ++i) m[i] = base[i] + 0.05f * m[i];
    models.push_back(m);
  }
  const std::vector<merge_policy> policies{nuslerp_merge{false, false}, multislerp_merge{}, karcher_merge{},
                                           sce_merge{0.3}, ram_merge{1e-2, true}, model_stock_merge{true}};
  for (const auto& policy : policies) {
    INFO(policy.index());
    const std::vector<std::vector<float>> inputs(models.begin(), models.begin() + (policy.index() == 6 ? 2 : 3));
    const std::vector<double> weights{0.5, 0.3, 0.9};
    CHECK(run(policy, base, inputs, weights, dims, 1) == run(policy, base, inputs, weights, dims, 2));
  }
  const std::vector<std::vector<float>> one{models[0]};
  CHECK(run(arcee_fusion_merge{}, base, one, {}, dims, 1) == run(arcee_fusion_merge{}, base, one, {}, dims, 2));
}

TEST_CASE("a base named for nuslerp and multislerp is their origin; for karcher one more model", "[merge][plan]") {
  memory_store base, a, b;
  insert_values(base, "w", {10, 10}, shape{2});
  insert_values(a, "w", {11, 10}, shape{2});
  insert_values(b, "w", {10, 11}, shape{2});
  const std::vector<memory_store> stores{a, b};
  const std::span<const memory_store> models(stores);
  merge_recipe nuslerp{.method = "nuslerp"};
  nuslerp.model_parameters = {{{"weight", parameter_setting(1.0)}}, {{"weight", parameter_setting(1.0)}}};
  const memory_store with_base = merge_stores(nuslerp, cpu_backend{}, &base, models);
  const double c = std::sqrt(0.5);
  CHECK(values_of(with_base.view("w"))[0] == Approx(10 + c).margin(1e-5));
  // Without a base, the models themselves: (11, 10) and (10, 11) at t = 0.5.
  const memory_store without = merge_stores(nuslerp, cpu_backend{}, static_cast<const memory_store*>(nullptr), models);
  const double theta = std::acos(220.0 / 221.0);
  CHECK(values_of(without.view("w"))[0] == Approx(21 * std::sin(theta / 2) / std::sin(theta)).epsilon(1e-6));
  CHECK(find_merge_method("nuslerp").uses_base());
  CHECK(find_merge_method("multislerp").uses_base());
  CHECK_FALSE(find_merge_method("karcher").uses_base());
  CHECK_FALSE(find_merge_method("nuslerp").needs_base);
}
