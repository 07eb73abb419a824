// Hand-computed cases and properties of the merge policies. Equality with an independent
// implementation of every method is in tests/reference/test_merge_reference.cpp.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
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

std::vector<float> run(const merge_policy& policy, const std::vector<float>& base, const std::vector<std::vector<float>>& models,
                       const std::vector<model_parameters>& parameters, shape dims, int threads = 0,
                       dtype type = dtype::f32) {
  memory_store store;
  insert_values(store, "base", base, dims, type);
  std::vector<const_tensor_view> views;
  for (std::size_t i = 0; i < models.size(); ++i) {
    std::string name = std::to_string(i);  // (not "m" + ...: GCC 12 warns falsely, bug 105329)
    views.push_back(insert_values(store, name, models[i], dims, type));
  }
  const tensor_view out = store.insert("out", type, dims);
  merge_with(policy, cpu_backend{threads}, merge_inputs{"layers.0.weight", store.view("base"), views, parameters}, out);
  return values_of(out);
}

}  // namespace

TEST_CASE("TIES trims, elects signs and takes the disjoint mean (hand-computed)", "[merge][ties]") {
  const std::vector<float> base{0, 0, 0, 0};
  const std::vector<std::vector<float>> models{{1, -2, 0.5f, 3}, {-1, 1, 1, -0.5f}};
  const std::vector<model_parameters> p{{1.0, 0.5}, {1.0, 0.5}};
  // Trim to 2 entries each: d1 -> [0, -2, 0, 3]; d2 has three |1|s, kept by position -> [-1, 1, 0, 0].
  // Elected signs from the sums [-1, -1, 0, 3]: -, -, + (zero counts as +), +.
  CHECK(run(task_vector_merge::ties(), base, models, p, shape{4}) == std::vector<float>{-1, -2, 0, 3});
  auto scaled = task_vector_merge::ties();
  scaled.lambda = 0.5;
  CHECK(run(scaled, base, models, p, shape{4}) == std::vector<float>{-0.5f, -1, 0, 1.5f});
  auto counted = task_vector_merge::ties();
  counted.consensus = sign_consensus::count;
  // Sign counts [-1, 0, 0, 1]: elected -, + (a tie counts as +), +, +.
  CHECK(run(counted, base, models, p, shape{4}) == std::vector<float>{-1, 1, 0, 3});
}

TEST_CASE("linear and task arithmetic follow their formulas (hand-computed)", "[merge][linear]") {
  const std::vector<std::vector<float>> models{{1, 2}, {3, 6}};
  const std::vector<model_parameters> p{{1.0}, {3.0}};
  CHECK(run(linear_merge{true}, {0, 0}, models, p, shape{2}) == std::vector<float>{2.5f, 5});
  CHECK(run(linear_merge{false}, {0, 0}, models, p, shape{2}) == std::vector<float>{10, 20});
  const std::vector<model_parameters> cancel{{1.0}, {-1.0}};  // zero weight sum divides by 1
  CHECK(run(linear_merge{true}, {0, 0}, models, cancel, shape{2}) == std::vector<float>{-2, -4});
  auto ta = task_vector_merge::task_arithmetic();
  ta.lambda = 2;
  CHECK(run(ta, {1, 1}, models, p, shape{2}) == std::vector<float>{1 + 2 * (0 + 3 * 2), 1 + 2 * (1 + 3 * 5)});
}

TEST_CASE("MagMax takes the largest task vector entry", "[merge][magmax]") {
  const std::vector<std::vector<float>> models{{2, -3, 1}, {-4, 1, 1}};
  CHECK(run(magmax_merge{1.0}, {0, 0, 0}, models, {{}, {}}, shape{3}) == std::vector<float>{-4, -3, 1});
}

TEST_CASE("merging identical models returns the model", "[merge][property]") {
  const auto base = random_values(500, 1);
  auto model = base;
  for (std::size_t i = 0; i < model.size(); ++i) model[i] += 0.1f * static_cast<float>(static_cast<int>(i % 7) - 3);
  const std::vector<std::vector<float>> same{model, model, model};
  const std::vector<model_parameters> thirds(3, model_parameters{1.0 / 3, 1.0});
  for (const merge_policy& policy : {merge_policy(linear_merge{}), merge_policy(task_vector_merge::ties()),
                                     merge_policy(task_vector_merge::task_arithmetic()), merge_policy(magmax_merge{}),
                                     merge_policy(model_stock_merge{}), merge_policy(task_vector_merge::dare_linear())}) {
    const auto out = run(policy, base, same, thirds, shape{500});
    for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(model[i]).margin(1e-6));
  }
  // SLERP between a model and itself is the model.
  const auto out = run(slerp_merge{0.4}, model, {model}, {{}}, shape{500});
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(model[i]).margin(1e-6));
}

TEST_CASE("density 1 TIES of one model returns the model", "[merge][property]") {
  const auto base = random_values(300, 2);
  const auto model = random_values(300, 3);
  const auto out = run(task_vector_merge::ties(), base, {model}, {{0.7, 1.0}}, shape{300});
  for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(model[i]).margin(1e-6));
}

TEST_CASE("DARE's mean over seeds approaches the task vector", "[merge][dare][property]") {
  const std::size_t n = 2000;
  const std::vector<float> base(n, 0.0f);
  const auto model = random_values(n, 4);
  std::vector<double> mean(n, 0.0);
  const int seeds = 400;
  for (int seed = 0; seed < seeds; ++seed) {
    auto dare = task_vector_merge::dare_linear();
    dare.seed = static_cast<std::uint64_t>(seed);
    const auto out = run(dare, base, {model}, {{1.0, 0.3}}, shape{static_cast<std::int64_t>(n)});
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n; ++i) {
      mean[i] += static_cast<double>(out[i]) / seeds;
      kept += out[i] != 0.0f ? 1u : 0u;
    }
    REQUIRE(static_cast<double>(kept) / static_cast<double>(n) == Approx(0.3).margin(0.05));
  }
  double error = 0;
  double size = 0;
  for (std::size_t i = 0; i < n; ++i) {
    error += std::fabs(mean[i] - static_cast<double>(model[i]));
    size += std::fabs(static_cast<double>(model[i]));
  }
  CHECK(error / size < 0.1);  // expected relative error about sqrt(0.7 / 0.3 / 400) ~ 0.08 per entry
}

TEST_CASE("every policy gives the same bits on one and two threads", "[merge][property]") {
  const std::size_t n = cpu_backend::chunk_elements * 2 + 999;
  const shape dims{3, static_cast<std::int64_t>(n / 3)};
  const auto base = random_values(dims.numel(), 5);
  std::vector<std::vector<float>> models;
  for (unsigned s = 0; s < 3; ++s) {
    auto m = random_values(dims.numel(), 10 + s, 0.05f);
    for (std::size_t i = 0; i < m.size(); ++i) m[i] += base[i];
    models.push_back(m);
  }
  const std::vector<model_parameters> p(3, model_parameters{0.4, 0.35, 0.02, 0.1});
  for (const auto& method : merge_methods()) {
    // Required parameters (slerp's and nearswap's t) at 0.3; methods of one model get one.
    const merge_policy policy = method.make(method.defaults([](std::string_view) { return 0.3; }));
    const std::size_t count = std::min(method.max_models, models.size());
    const std::vector<std::vector<float>> used(models.begin(), models.begin() + static_cast<std::ptrdiff_t>(count));
    const std::vector<model_parameters> used_parameters(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(count));
    INFO(method.name);
    for (dtype type : {dtype::f32, dtype::bf16}) {
      CHECK(run(policy, base, used, used_parameters, dims, 1, type) == run(policy, base, used, used_parameters, dims, 2, type));
    }
  }
  CHECK(run(slerp_merge{0.3}, base, {models[0]}, {{}}, dims, 1) == run(slerp_merge{0.3}, base, {models[0]}, {{}}, dims, 2));
}

TEST_CASE("policies refuse bad inputs and parameters with names", "[merge][errors]") {
  memory_store store;
  const auto a = insert_values(store, "a", {1, 2, 3}, shape{3});
  const auto b = insert_values(store, "b", {1, 2, 3, 4}, shape{4});
  const tensor_view out = store.insert("out", dtype::f32, shape{3});
  const const_tensor_view mismatched[] = {b};
  const model_parameters one[] = {{1.0, 0.5}};
  CHECK_THROWS_WITH(task_vector_merge::ties().merge(cpu_backend{}, merge_inputs{"w", a, mismatched, one}, out),
                    Catch::Contains("shape [4]") && Catch::Contains("'w'"));
  const const_tensor_view fine[] = {a};
  const model_parameters bad_density[] = {{1.0, 1.5}};
  CHECK_THROWS_WITH(task_vector_merge::ties().merge(cpu_backend{}, merge_inputs{"w", a, fine, bad_density}, out),
                    Catch::Contains("density") && Catch::Contains("[0, 1]"));
  const model_parameters nan_weight[] = {{std::nan("")}};
  CHECK_THROWS_WITH(linear_merge{}.merge(cpu_backend{}, merge_inputs{"w", std::nullopt, fine, nan_weight}, out),
                    Catch::Contains("weight") && Catch::Contains("finite"));
  CHECK_THROWS_WITH(task_vector_merge::ties().merge(cpu_backend{}, merge_inputs{"w", std::nullopt, fine, one}, out),
                    Catch::Contains("needs a base"));
  const model_parameters della[] = {{1.0, 0.9, 0.01, 0.2}};
  CHECK_THROWS_WITH(task_vector_merge::della().merge(cpu_backend{}, merge_inputs{"w", a, fine, della}, out),
                    Catch::Contains("epsilon"));
  const const_tensor_view two[] = {a, a};
  const model_parameters two_p[] = {{}, {}};
  CHECK_THROWS_WITH(slerp_merge{0.5}.merge(cpu_backend{}, merge_inputs{"w", a, two, two_p}, out),
                    Catch::Contains("exactly one model"));
}

TEST_CASE("merge_stores_into checks every name and shape before writing anything", "[merge][recipe]") {
  memory_store a, b, out;
  insert_values(a, "first", {1, 2}, shape{2});
  insert_values(a, "second", {3, 4}, shape{2});
  insert_values(b, "first", {5, 6}, shape{2});
  insert_values(b, "second", {7, 8}, shape{2});
  insert_values(out, "first", {0, 0}, shape{2});
  insert_values(out, "second", {0, 0}, shape{2});
  const merge_recipe average{.method = "linear", .model_parameters = {{{"weight", 1.0}}, {{"weight", 1.0}}}};
  const std::array models{a, b};
  merge_stores_into(average, cpu_backend{}, static_cast<const memory_store*>(nullptr), std::span(models), out);
  CHECK(values_of(out.view("first")) == std::vector<float>{3, 4});
  CHECK(values_of(out.view("second")) == std::vector<float>{5, 6});

  memory_store fresh;
  insert_values(fresh, "first", {0, 0}, shape{2});
  insert_values(fresh, "second", {0, 0, 0}, shape{3});
  CHECK_THROWS_WITH(merge_stores_into(average, cpu_backend{}, static_cast<const memory_store*>(nullptr),
                                      std::span(models), fresh),
                    Catch::Contains("'second'"));
  CHECK(values_of(fresh.view("first")) == std::vector<float>{0, 0});  // nothing written
  memory_store short_model;
  insert_values(short_model, "first", {9, 9}, shape{2});
  const std::array uneven{a, short_model};
  CHECK_THROWS_WITH(merge_stores_into(average, cpu_backend{}, static_cast<const memory_store*>(nullptr),
                                      std::span(uneven), out),
                    Catch::Contains("'second'") && Catch::Contains("missing from model 1"));
  CHECK(values_of(out.view("first")) == std::vector<float>{3, 4});
}

TEST_CASE("a merge into a store with the offending tensor in the middle writes nothing", "[merge][recipe]") {
  memory_store a, b, out;
  for (auto* store : {&a, &b, &out}) {
    insert_values(*store, "first", {1, 2}, shape{2});
    insert_values(*store, "middle", {3, 4}, shape{2});
    insert_values(*store, "last", {5, 6}, shape{2});
  }
  memory_store bad_output;
  insert_values(bad_output, "first", {0, 0}, shape{2});
  insert_values(bad_output, "middle", {0, 0, 0}, shape{3});
  insert_values(bad_output, "last", {0, 0}, shape{2});
  const merge_recipe ties{.method = "ties", .model_parameters = {{{"weight", 1.0}}}};
  const std::array models{b};
  CHECK_THROWS_WITH(merge_stores_into(ties, cpu_backend{}, &a, std::span(models), bad_output), Catch::Contains("'middle'"));
  CHECK(values_of(bad_output.view("first")) == std::vector<float>{0, 0});
  memory_store extra = b;
  insert_values(extra, "surplus", {1}, shape{1});
  const std::array with_extra{extra};
  CHECK_THROWS_WITH(merge_stores_into(ties, cpu_backend{}, &a, std::span(with_extra), out),
                    Catch::Contains("'surplus'") && Catch::Contains("not in the base model"));
  memory_store mismatched;
  mismatched.insert("first", b.view("first"));
  mismatched.insert("middle", dtype::i64, shape{2});
  mismatched.insert("last", b.view("last"));
  const std::array with_integers{mismatched};
  CHECK_THROWS_WITH(merge_stores_into(ties, cpu_backend{}, &a, std::span(with_integers), out), Catch::Contains("'middle'"));
  CHECK(values_of(out.view("first")) == std::vector<float>{1, 2});
}

TEST_CASE("embeddings of different vocabularies are merged over their common rows (mergekit's rule)", "[merge][plan]") {
  memory_store base, grown;
  insert_values(base, "model.embed_tokens.weight", {1, 2, 3, 4, 5, 6, 7, 8}, shape{4, 2});
  insert_values(base, "model.layers.0.w", {1, 1, 1, 1}, shape{2, 2});
  insert_values(grown, "model.embed_tokens.weight", {2, 3, 4, 5, 6, 7, 8, 9, 50, 60, 70, 80}, shape{6, 2});
  insert_values(grown, "model.layers.0.w", {2, 2, 2, 2}, shape{2, 2});
  const std::vector<memory_store> stores{grown};
  const std::span<const memory_store> models(stores);
  merge_recipe recipe{.method = "task_arithmetic"};
  recipe.model_parameters = {{{"weight", parameter_setting(0.5)}}};
  const memory_store merged = merge_stores(recipe, cpu_backend{}, &base, models);
  const auto embed = merged.view("model.embed_tokens.weight");
  CHECK(embed.shape() == shape{4, 2});  // the base's rows; the model's two added rows are left out
  CHECK(values_of(embed) == std::vector<float>{1.5f, 2.5f, 3.5f, 4.5f, 5.5f, 6.5f, 7.5f, 8.5f});
  // The common rows for methods without a base too: the smaller vocabulary wins.
  const std::vector<memory_store> both{grown, base};
  merge_recipe linear{.method = "linear"};
  linear.model_parameters = {{}, {}};
  linear.parameters.emplace("weight", parameter_setting(1.0));
  const memory_store averaged = merge_stores(linear, cpu_backend{}, static_cast<const memory_store*>(nullptr),
                                             std::span<const memory_store>(both));
  CHECK(averaged.view("model.embed_tokens.weight").shape() == shape{4, 2});
  CHECK(values_of(averaged.view("model.embed_tokens.weight"))[0] == 1.5f);
  // Any other difference is still an error naming the tensor: inside a layer, or in the columns.
  memory_store odd_columns;
  insert_values(odd_columns, "model.embed_tokens.weight", std::vector<float>(12, 1.0f), shape{4, 3});
  insert_values(odd_columns, "model.layers.0.w", {2, 2, 2, 2}, shape{2, 2});
  memory_store layer_base;
  insert_values(layer_base, "model.embed_tokens.weight", {1, 2, 3, 4, 5, 6, 7, 8}, shape{4, 2});
  insert_values(layer_base, "model.layers.0.w", {1, 1, 1, 1, 1, 1}, shape{3, 2});
  CHECK_THROWS_WITH(merge_stores(recipe, cpu_backend{}, &layer_base, models), Catch::Contains("model.layers.0.w"));
  const std::vector<memory_store> columns{odd_columns};
  CHECK_THROWS_WITH(merge_stores(recipe, cpu_backend{}, &base, std::span<const memory_store>(columns)),
                    Catch::Contains("model.embed_tokens.weight"));
}
